"""What the engine's per-iteration stop agreement costs a DDP step, by how it is carried.

Run: ``python benchmarks/agreement_ride.py [--rounds 12] [--samples 2048]``

One job of 2 gloo ranks (``idist.spawn``, 1 thread per rank) trains the CNN of
``benchmarks/ddp_overhead.py`` (global batch 128) with a hand-written DDP loop, in four
ways, one pass over ``--samples`` samples each, rotated from round to round:

- ``DDP``: nothing else (the baseline);
- ``+ blocking collective``: ``idist.agree_flags`` after every step;
- ``+ overlapped collective``: ``idist.start_agreement`` after every step, read after the
  next one (what the engine did before the ride);
- ``+ ride``: the model from ``idist.auto_model`` (its gradient all-reduce carries the
  flags), ``AgreementChannel.start`` after every step, read after the next one (what the
  engine does with such a model).

Each variant's figure is the mean iteration time of a pass (rank 0, after 3 warm-up
iterations); the table gives the median over rounds and the median per-round ratio to
``DDP``, with min-max. All variants run in the same processes, back to back, so that the
machine's drift affects them alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ddp_overhead as job  # noqa: E402  (the same CNN, data and learning rate)

import distengine.distributed as idist  # noqa: E402

WARMUP = 3
VARIANTS = ("DDP", "+ blocking collective", "+ overlapped collective", "+ ride")


def _pass(variant: str, samples: int) -> float:
    """Mean iteration time (s) of one pass over ``samples`` samples."""
    ds = job._data(samples)
    if variant == "+ ride":
        model = idist.auto_model(job._cnn())
    else:
        model = torch.nn.parallel.DistributedDataParallel(job._cnn())
    opt = torch.optim.SGD(model.parameters(), lr=job.LR, momentum=job.MOMENTUM)
    sampler = torch.utils.data.distributed.DistributedSampler(ds, shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=job.GLOBAL_BATCH // idist.get_world_size(), sampler=sampler
    )
    channel = idist.AgreementChannel() if variant == "+ ride" else None
    pending, start, n = None, 0.0, 0
    for x, y in loader:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if variant == "+ blocking collective":
            idist.agree_flags(0)
        elif variant != "DDP":
            if pending is not None:
                pending.wait()
            pending = channel.start(0) if channel else idist.start_agreement(0)
        n += 1
        if n == WARMUP:
            start = time.perf_counter()
    elapsed = time.perf_counter() - start
    if channel is not None and not channel.riding:
        raise RuntimeError("the ride fell back to collectives: the measurement is void")
    if pending is not None:
        pending.wait()  # (no backward pass follows the last one: read as a collective)
    return elapsed / (n - WARMUP)


def _rounds(local_rank: int, rounds: int, samples: int) -> dict[str, list[float]]:
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        for variant in order:
            idist.barrier()
            times[variant].append(_pass(variant, samples))
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--samples", type=int, default=2048, help="samples per pass")
    args = p.parse_args()
    times = idist.spawn(_rounds, 2, backend="gloo", args=(args.rounds, args.samples))[0]
    base = times["DDP"]
    print(
        f"\n2 gloo ranks, the CNN of ddp_overhead.py, global batch 128, {args.samples} samples "
        f"per pass, 1 thread per rank; {args.rounds} rounds, rotated; rank 0; torch "
        f"{torch.__version__}"
    )
    print("| variant | ms per iteration | time ratio to DDP (per round) |")
    print("| --- | --- | --- |")
    for v in VARIANTS:
        ms = [t * 1e3 for t in times[v]]
        ratios = [t / b for t, b in zip(times[v], base)]
        print(
            f"| {v} | {statistics.median(ms):.1f} ({min(ms):.1f}-{max(ms):.1f}) | "
            f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |"
        )


if __name__ == "__main__":
    main()
