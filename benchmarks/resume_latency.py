"""Time to the first batch after resuming mid-epoch: distengine's cursor vs skipping by iteration.

Run: ``python benchmarks/resume_latency.py`` (about 2 minutes here; ``--quick`` for a short run).

A data set whose ``__getitem__`` sleeps 5 ms stands in for slow storage or decoding
(2,000 samples, batch 32: 63 batches per epoch). For each loader, ``num_workers`` in
{0, 2} and a resume point at 0%, 50% and 95% of the epoch, we measure the time from the
start of the resume until the first batch reaches the training step:

- **distengine**: ``idist.auto_dataloader`` and an ``Engine`` whose ``load_state_dict``
  gets the state saved at that point (the cursor), then ``run``; the time stops when the
  process function receives its first batch. The saved states come from an Engine run
  that was terminated at the right iteration (over a copy of the data set without the
  sleep: the state depends only on positions, not on sample contents).
- **plain DataLoader**: ``DistributedSampler(num_replicas=1, rank=0)``, resumed as users
  (and Ignite, for a DataLoader without a resumable sampler) do: create the iterator,
  fetch and drop the ``k`` batches before the resume point, take the next one.

Each figure is the median of ``--repeats`` trials. Both loaders are checked to deliver
the batch an uninterrupted pass delivers at that point, so neither is fast by being wrong.
The target (issue 5): distengine at 95% within 1.2x of its 0% figure.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import distengine.distributed as idist
from distengine.engine import Engine, Events

FRACTIONS = (0.0, 0.5, 0.95)
TARGET_RATIO = 1.2
SEED = 1234


class SlowDataset(Dataset):
    """Sample ``i`` is ``tensor(i)``, after ``delay`` seconds of simulated I/O."""

    def __init__(self, n: int, delay: float):
        self.n, self.delay = n, delay

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.delay:
            time.sleep(self.delay)
        return torch.tensor(index)


def _resume_iteration(fraction: float, epoch_length: int) -> int:
    return min(int(round(fraction * epoch_length)), epoch_length - 1)


# --- distengine ---------------------------------------------------------------------------
def _saved_states(
    n: int, batch_size: int, points: list[int]
) -> tuple[dict[int, dict], list[torch.Tensor]]:
    """Engine states saved after ``k`` iterations of pass 0 for each ``k`` in ``points``,
    and the batches of an uninterrupted pass 0 (the reference order)."""
    fast = idist.auto_dataloader(SlowDataset(n, 0.0), batch_size=batch_size, shuffle=True)
    reference: list[torch.Tensor] = []
    recorder = Engine(lambda engine, batch: reference.append(batch.clone()))
    recorder.run(fast, max_epochs=1, seed=SEED)
    states = {}
    for k in points:
        engine = Engine(lambda engine, batch: None)
        if k == 0:
            # State before the first batch of the epoch: stop as soon as the epoch starts.
            engine.add_event_handler(Events.EPOCH_STARTED(once=1), lambda e: e.terminate())
        else:
            engine.add_event_handler(Events.ITERATION_COMPLETED(once=k), lambda e: e.terminate())
        engine.run(fast, max_epochs=1, seed=SEED)
        assert engine.state.iteration == k, (engine.state.iteration, k)
        states[k] = engine.state_dict()
    return states, reference


def _distengine_first_batch(loader: DataLoader, state: dict) -> tuple[float, torch.Tensor]:
    seen: list[tuple[float, torch.Tensor]] = []

    def step(engine: Engine, batch: torch.Tensor) -> None:
        seen.append((time.perf_counter(), batch))
        engine.terminate()

    engine = Engine(step)
    t0 = time.perf_counter()
    engine.load_state_dict(state)
    engine.run(loader)
    assert seen, "the resumed run delivered no batch"
    return seen[0][0] - t0, seen[0][1]


# --- plain DataLoader ------------------------------------------------------------------------
def _plain_first_batch(loader: DataLoader, k: int) -> tuple[float, torch.Tensor]:
    loader.sampler.set_epoch(0)
    t0 = time.perf_counter()
    it = iter(loader)
    for _ in range(k):
        next(it)  # fetched (every sample read) and dropped
    batch = next(it)
    elapsed = time.perf_counter() - t0
    del it  # shuts the workers down before the next trial
    return elapsed, batch


def _plain_reference(sampler: DistributedSampler, batch_size: int) -> list[torch.Tensor]:
    sampler.set_epoch(0)
    order = torch.tensor(list(sampler))
    return list(order.split(batch_size))


# --- table -----------------------------------------------------------------------------------
def _measure(
    trial: Callable[[], tuple[float, torch.Tensor]], expected: torch.Tensor, repeats: int
) -> float:
    times = []
    for _ in range(repeats):
        elapsed, batch = trial()
        if not torch.equal(batch, expected):
            raise AssertionError(
                f"resumed at the wrong batch: got {batch.tolist()}, expected {expected.tolist()}"
            )
        times.append(elapsed)
    return statistics.median(times)


def run(n: int, batch_size: int, delay: float, workers: list[int], repeats: int) -> list[dict]:
    epoch_length = -(-n // batch_size)
    points = [_resume_iteration(f, epoch_length) for f in FRACTIONS]
    states, reference = _saved_states(n, batch_size, points)
    assert len(reference) == epoch_length
    data = SlowDataset(n, delay)
    rows = []
    for w in workers:
        ours = idist.auto_dataloader(data, batch_size=batch_size, shuffle=True, num_workers=w)
        sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=SEED)
        plain = DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=w)
        plain_reference = _plain_reference(sampler, batch_size)
        for fraction, k in zip(FRACTIONS, points):
            t = _measure(
                lambda k=k, dl=ours: _distengine_first_batch(dl, states[k]), reference[k], repeats
            )
            rows.append(
                dict(loader="distengine", workers=w, fraction=fraction, skipped=k, seconds=t)
            )
            t = _measure(
                lambda k=k, dl=plain: _plain_first_batch(dl, k), plain_reference[k], repeats
            )
            rows.append(dict(loader="plain", workers=w, fraction=fraction, skipped=k, seconds=t))
    return rows


def format_table(rows: list[dict]) -> str:
    names = {
        "distengine": "distengine (`auto_dataloader`, cursor)",
        "plain": "plain DataLoader + DistributedSampler, skip by fetching",
    }
    base = {(r["loader"], r["workers"]): r["seconds"] for r in rows if r["fraction"] == 0.0}
    lines = [
        "| loader | workers | resume at | batches skipped | time to first batch | vs 0% |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(rows, key=lambda r: (r["loader"] != "distengine", r["workers"], r["fraction"])):
        ratio = r["seconds"] / base[(r["loader"], r["workers"])]
        lines.append(
            f"| {names[r['loader']]} | {r['workers']} | {r['fraction']:.0%} | {r['skipped']} "
            f"| {r['seconds'] * 1000:.0f} ms | {ratio:.2f}x |"
        )
    return "\n".join(lines)


def verdict(rows: list[dict]) -> str:
    parts = []
    for w in sorted({r["workers"] for r in rows}):
        times = {
            r["fraction"]: r["seconds"]
            for r in rows
            if r["loader"] == "distengine" and r["workers"] == w
        }
        ratio = times[FRACTIONS[-1]] / times[0.0]
        parts.append(
            f"num_workers={w}: {ratio:.2f}x ({'met' if ratio <= TARGET_RATIO else 'NOT met'})"
        )
    return f"Target: distengine at {FRACTIONS[-1]:.0%} within {TARGET_RATIO}x of 0%: " + "; ".join(
        parts
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--sleep-ms", type=float, default=5.0, help="per-sample delay in __getitem__"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="num_workers values")
    parser.add_argument("--repeats", type=int, default=3, help="trials per figure (median)")
    parser.add_argument("--quick", action="store_true", help="500 samples, 1 trial")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.repeats = 500, 1
    if args.samples < args.batch_size or args.repeats < 1:
        raise ValueError(
            f"Expected samples >= batch size and repeats >= 1, got samples={args.samples}, "
            f"batch size={args.batch_size}, repeats={args.repeats}"
        )
    rows = run(args.samples, args.batch_size, args.sleep_ms / 1000, args.workers, args.repeats)
    print(
        f"Resume latency: {args.samples} samples, batch {args.batch_size}, {args.sleep_ms:g} ms per "
        f"sample, median of {args.repeats}; torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print(format_table(rows))
    print()
    print(verdict(rows))


if __name__ == "__main__":
    main()
