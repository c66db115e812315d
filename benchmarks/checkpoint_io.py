"""Checkpoint I/O throughput: distengine's Checkpoint against a plain torch.save + fsync.

Run from the repository root (takes about a minute; needs ~1.5 GB free on the disk
holding ``--dir`` and, for the S3 rows, ``moto_server`` and ``s3fs``)::

    python benchmarks/checkpoint_io.py                 # ~200 MB model + Adam state
    python benchmarks/checkpoint_io.py --mb 50 --repeat 2 --no-s3

It prints one markdown table:

- sync save: ``Checkpoint`` (payload + SHA-256 computed while writing + fsync + rename +
  manifest) vs ``torch.save`` of the same state to the same disk followed by ``fsync``;
- async save: how long the training loop is held up by an ``async_save=True`` checkpoint
  (the call itself, plus the slowdown of the training steps that run while the write
  goes on in the background), relative to the sync save time;
- load: ``Checkpoint.load_objects`` (reads, verifies the digest, loads into the
  objects) vs ``torch.load`` + ``load_state_dict``;
- S3: save and load through s3fs against a moto server on loopback;
- sharded (``--sharded-mb``, 2 gloo ranks, an FSDP2 model + AdamW state): ``Checkpoint``
  (every rank writes its shards through DCP into its own file, the file's SHA-256 and each
  chunk's XXH3-128 computed while writing, the manifest committed after all are durable)
  vs a plain ``dcp.save`` with DCP's ``FileSystemWriter`` (fsync, no digests) of the same
  state, alternated; the loads (``Checkpoint.load_objects``: every chunk read checked
  against its digest, resharding planner) vs ``dcp.load`` + ``set_state_dict``; and the
  async stall (call + slowdown of the training steps run during the background write, on
  every rank, against the mean of the windows just before and just after, net of the same
  measurement in control rounds without a save) against the sync save time.

Each figure is the median of ``--repeat`` runs (the sharded async rows: ``6 * --repeat``
rounds with a save alternating with as many control rounds, with quartiles).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from distengine.engine import Engine  # noqa: E402
from distengine.handlers.checkpoint import Checkpoint  # noqa: E402
from distengine.handlers.disk_saver import DiskSaver  # noqa: E402


def build(mb: int) -> tuple[nn.Module, torch.optim.Optimizer, Engine]:
    """A model whose parameters plus Adam's two moments take about ``mb`` MB."""
    width = 2048
    n_layers = max(1, round(mb * 1e6 / 3 / 4 / (width * width)))
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(n_layers)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, width)).sum().backward()
    opt.step()
    return model, opt, Engine(lambda e, b: None)


def state_bytes(model: nn.Module, opt: torch.optim.Optimizer) -> int:
    tensors = list(model.state_dict().values())
    tensors += [
        t for s in opt.state_dict()["state"].values() for t in s.values() if torch.is_tensor(t)
    ]
    return sum(t.numel() * t.element_size() for t in tensors)


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plain_save(objs, path: str) -> None:
    model, opt, _ = objs
    with open(path, "wb") as f:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, f)
        f.flush()
        os.fsync(f.fileno())


def plain_load(objs, path: str) -> None:
    model, opt, _ = objs
    sd = torch.load(path, weights_only=True)
    model.load_state_dict(sd["model"])
    opt.load_state_dict(sd["opt"])


def train_steps(n: int) -> None:
    a = torch.randn(384, 384)
    for _ in range(n):
        for _ in range(8):
            a = torch.tanh(a @ a.T / 384)


def async_stall(objs, d: str, repeat: int, steps: int) -> tuple[float, float, float]:
    """Time of the call, extra time of ``steps`` training steps run during the write, and
    how long ``wait()`` still blocked after those steps (the write's remaining time).

    Each measured loop is paired with a loop without a save run just before it, so load
    from other processes on the machine affects both alike.
    """
    model, opt, engine = objs
    handler = Checkpoint(
        {"model": model, "opt": opt, "trainer": engine},
        DiskSaver(d, require_empty=False),
        async_save=True,
    )
    calls, extras, waits = [], [], []
    for i in range(repeat):
        start = time.perf_counter()
        train_steps(steps)
        baseline = time.perf_counter() - start
        engine.state.iteration = 1000 + i
        start = time.perf_counter()
        handler(engine)
        calls.append(time.perf_counter() - start)
        start = time.perf_counter()
        train_steps(steps)
        extras.append(time.perf_counter() - start - baseline)
        start = time.perf_counter()
        handler.wait()
        waits.append(time.perf_counter() - start)
    return statistics.median(calls), max(0.0, statistics.median(extras)), statistics.median(waits)


def s3_rows(objs, size: int, repeat: int) -> list[tuple[str, str]]:
    try:
        from s3_server import start_s3_server
    except ImportError as e:
        return [("S3 (moto, loopback)", f"skipped: {e}")]
    server = start_s3_server()
    try:
        model, opt, engine = objs
        url, opts = server.url("bench"), server.storage_options
        handler = Checkpoint(
            {"model": model, "opt": opt, "trainer": engine}, DiskSaver(url, **opts)
        )
        counter = iter(range(10**6))

        def save() -> None:
            engine.state.iteration = next(counter) + 1
            handler(engine)

        t_save = median_time(save, repeat)
        path = handler.last_checkpoint
        t_load = median_time(
            lambda: Checkpoint.load_objects(
                {"model": model, "opt": opt}, path, strict=False, **opts
            ),
            repeat,
        )
    finally:
        server.stop()
    return [
        (
            "S3 save (Checkpoint, moto on loopback)",
            f"{size / t_save / 1e6:.0f} MB/s ({t_save:.2f} s)",
        ),
        (
            "S3 load + verify (Checkpoint.load_objects)",
            f"{size / t_load / 1e6:.0f} MB/s ({t_load:.2f} s)",
        ),
    ]


def _barrier_time(fn) -> float:
    """Wall time of a collective operation: from a barrier before it to one after it."""
    import distengine.distributed as idist

    idist.barrier()
    start = time.perf_counter()
    fn()
    idist.barrier()
    return time.perf_counter() - start


def _slowest_rank_time(fn) -> float:
    """Time of ``fn`` on the rank where it took longest (ranks start together; the barriers
    around a short call would add their own latency to it)."""
    import distengine.distributed as idist

    idist.barrier()
    start = time.perf_counter()
    fn()
    return max(idist.all_gather(time.perf_counter() - start))


def _sharded_job(local_rank: int, mb: int, repeat: int, d: str) -> list[tuple[str, str]]:
    """One rank of the sharded rows (run by ``idist.spawn`` on 2 ranks)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    import distengine.distributed as idist

    torch.set_num_threads(1)
    width = 2048
    n_layers = max(1, round(mb * 1e6 / 3 / 4 / (width * width)))
    torch.manual_seed(0)
    model = idist.auto_model(
        nn.Sequential(*[nn.Linear(width, width) for _ in range(n_layers)]), sharding="fsdp"
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, width)).sum().backward()
    opt.step()
    engine = Engine(lambda e, b: None)
    local = sum(
        t.to_local().numel() * t.element_size()
        for t in list(model.parameters())
        + [v for st in opt.state.values() for v in st.values() if v.dim() > 0]
    )
    size = sum(idist.all_gather(local))
    to_save = {"model": model, "optimizer": opt, "trainer": engine}
    handler = Checkpoint(to_save, DiskSaver(os.path.join(d, "ours")), n_saved=None)

    def plain_state() -> dict:
        return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}

    plain, ours = [], []
    for i in range(2 * repeat):
        engine.state.iteration = i + 1
        runs = [
            (
                plain,
                lambda i=i: dcp.save(plain_state(), checkpoint_id=os.path.join(d, f"plain_{i}")),
            ),
            (ours, lambda: handler(engine)),
        ]
        for times, fn in runs if i % 2 == 0 else runs[::-1]:
            times.append(_barrier_time(fn))
    t_plain, t_ours = statistics.median(plain), statistics.median(ours)
    latest = handler.last_checkpoint

    def plain_load() -> None:
        state = plain_state()
        dcp.load(state, checkpoint_id=os.path.join(d, "plain_0"))
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, opt, state["optim"])

    plain, ours = [], []
    for i in range(2 * repeat):
        runs = [
            (plain, plain_load),
            (ours, lambda: Checkpoint.load_objects({"model": model, "optimizer": opt}, latest)),
        ]
        for times, fn in runs if i % 2 == 0 else runs[::-1]:
            times.append(_barrier_time(fn))
    t_plain_load, t_load = statistics.median(plain), statistics.median(ours)

    handler = Checkpoint(to_save, DiskSaver(os.path.join(d, "async")), n_saved=1, async_save=True)
    steps = max(1, round(t_ours / median_time(lambda: train_steps(1), 3)))
    # Each window of training steps during a write is compared with the windows just before
    # the call and just after the write (their mean: a drift of the machine's speed cancels).
    # Windows of training on both ranks of these 2 shared cores vary by +-20%, hence 6x the
    # rounds of the other rows and the quartiles printed with the median; and rounds with a
    # save alternate with control rounds (the same windows and collective, no save), whose
    # median is the measurement's own bias: the slowdown is the difference of the medians.
    calls, extras, controls = [], [], []
    for i in range(12 * repeat):
        save = i % 2 == 0
        before = _barrier_time(lambda: train_steps(steps))
        engine.state.iteration = 1000 + i
        call = _slowest_rank_time(lambda save=save: handler(engine) if save else None)
        during = _barrier_time(lambda: train_steps(steps))
        handler.wait()
        after = _barrier_time(lambda: train_steps(steps))
        (extras if save else controls).append(during - (before + after) / 2)
        if save:
            calls.append(call)
    t_call = statistics.median(calls)
    t_extra = max(0.0, statistics.median(extras) - statistics.median(controls))
    q1, _, q3 = statistics.quantiles(extras, n=4)
    c1, _, c3 = statistics.quantiles(controls, n=4)
    return [
        ("sharded: state size (2 ranks, FSDP2 + AdamW)", f"{size / 1e6:.0f} MB"),
        (
            "sharded: dcp.save (FileSystemWriter, fsync)",
            f"{size / t_plain / 1e6:.0f} MB/s ({t_plain:.2f} s)",
        ),
        (
            "sharded: Checkpoint save (per-rank files, SHA-256 + chunk digests, manifest)",
            f"{size / t_ours / 1e6:.0f} MB/s ({t_ours:.2f} s)",
        ),
        ("sharded: save throughput vs dcp.save (target >= 0.8x)", f"{t_plain / t_ours:.2f}x"),
        (
            "sharded: dcp.load + set_state_dict",
            f"{size / t_plain_load / 1e6:.0f} MB/s ({t_plain_load:.2f} s)",
        ),
        (
            "sharded: Checkpoint.load_objects (verify chunk digests, reshard planner)",
            f"{size / t_load / 1e6:.0f} MB/s ({t_load:.2f} s)",
        ),
        ("sharded: load throughput vs dcp.load (target >= 0.8x)", f"{t_plain_load / t_load:.2f}x"),
        ("sharded async: call (copy shards to CPU, agree; slowest rank)", f"{t_call * 1e3:.0f} ms"),
        (
            f"sharded async: {steps} training steps during the write vs the windows around "
            "them (median; quartiles)",
            f"{statistics.median(extras) * 1e3:+.0f} ms ({q1 * 1e3:+.0f} / {q3 * 1e3:+.0f} ms)",
        ),
        (
            "sharded async: the same in control rounds without a save (median; quartiles)",
            f"{statistics.median(controls) * 1e3:+.0f} ms ({c1 * 1e3:+.0f} / {c3 * 1e3:+.0f} ms)",
        ),
        ("sharded async: slowdown (difference of the medians)", f"{t_extra * 1e3:.0f} ms"),
        (
            "sharded async stall / sync save time (target <= 10%)",
            f"{(t_call + t_extra) / t_ours:.1%}",
        ),
    ]


def sharded_rows(mb: int, repeat: int, base: str | None) -> list[tuple[str, str]]:
    import distengine.distributed as idist

    with tempfile.TemporaryDirectory(dir=base) as d:
        return idist.spawn(_sharded_job, 2, backend="gloo", args=(mb, repeat, d))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="model + optimizer state size (MB)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--dir", default=None, help="directory on the disk to test (default: a temp dir)"
    )
    parser.add_argument("--no-s3", action="store_true")
    parser.add_argument(
        "--sharded-mb",
        type=int,
        default=200,
        help="state size of the sharded rows (2 ranks); 0: no sharded rows",
    )
    parser.add_argument("--only-sharded", action="store_true", help="print the sharded rows only")
    args = parser.parse_args()
    if args.only_sharded:
        rows = sharded_rows(args.sharded_mb, args.repeat, args.dir)
        print("| measurement | result |\n| --- | --- |")
        for name, value in rows:
            print(f"| {name} | {value} |")
        return

    objs = build(args.mb)
    size = state_bytes(objs[0], objs[1])
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        # Like a checkpointer, the baseline writes a new file each time: overwriting the
        # same file in place is faster on most filesystems but keeps no previous copy.
        # Plain and Checkpoint saves alternate, so load from other processes on this
        # machine hits both alike; each is timed 2 x --repeat times.
        model, opt, engine = objs
        handler = Checkpoint(
            {"model": model, "opt": opt, "trainer": engine},
            DiskSaver(os.path.join(d, "sync")),
            n_saved=None,
        )
        plain_times, sync_times = [], []

        def plain_once(i: int) -> None:
            start = time.perf_counter()
            plain_save(objs, os.path.join(d, f"plain_{i}.pt"))
            plain_times.append(time.perf_counter() - start)

        def sync_once(i: int) -> None:
            engine.state.iteration = i + 1
            start = time.perf_counter()
            handler(engine)
            sync_times.append(time.perf_counter() - start)

        for i in range(2 * args.repeat):
            # The second writer of a pair pays for reclaiming the page cache the first
            # one filled: alternate which one goes first.
            for run in (plain_once, sync_once) if i % 2 == 0 else (sync_once, plain_once):
                run(i)
        t_plain, t_sync = statistics.median(plain_times), statistics.median(sync_times)
        plain_path = os.path.join(d, "plain_0.pt")
        path = handler.last_checkpoint
        t_plain_load = median_time(lambda: plain_load(objs, plain_path), args.repeat)
        t_load = median_time(
            lambda: Checkpoint.load_objects({"model": model, "opt": opt}, path, strict=False),
            args.repeat,
        )
        steps = max(1, round(t_sync / median_time(lambda: train_steps(1), 3)))
        t_call, t_extra, t_wait = async_stall(
            objs, os.path.join(d, "async"), 2 * args.repeat, steps
        )
    rows = [
        ("state size", f"{size / 1e6:.0f} MB"),
        ("torch.save + fsync", f"{size / t_plain / 1e6:.0f} MB/s ({t_plain:.2f} s)"),
        (
            "Checkpoint sync save (SHA-256, fsync, rename, manifest)",
            f"{size / t_sync / 1e6:.0f} MB/s ({t_sync:.2f} s)",
        ),
        ("sync save / plain save throughput (target >= 0.8x)", f"{t_plain / t_sync:.2f}x"),
        ("async save: call (copy to CPU)", f"{t_call * 1e3:.0f} ms"),
        (
            f"async save: slowdown of {steps} training steps during the write",
            f"{t_extra * 1e3:.0f} ms",
        ),
        ("async stall / sync save time (target <= 10%)", f"{(t_call + t_extra) / t_sync:.1%}"),
        ("async save: wait() after those steps (write still running)", f"{t_wait * 1e3:.0f} ms"),
        (
            "torch.load + load_state_dict",
            f"{size / t_plain_load / 1e6:.0f} MB/s ({t_plain_load:.2f} s)",
        ),
        (
            "Checkpoint.load_objects (read, verify SHA-256, load)",
            f"{size / t_load / 1e6:.0f} MB/s ({t_load:.2f} s)",
        ),
    ]
    if not args.no_s3:
        rows += s3_rows(objs, size, args.repeat)
    if args.sharded_mb > 0:
        rows += sharded_rows(args.sharded_mb, args.repeat, args.dir)
    print("| measurement | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
