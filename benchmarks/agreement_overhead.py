"""What hang detection costs on the per-iteration agreement, 2 gloo ranks.

Run: ``python benchmarks/agreement_overhead.py [--calls N] [--trials T]``

The engine calls ``idist.agree_flags`` once per iteration at world size > 1. For hang
reports it marks the collective in flight (three attribute writes and a ``try/finally``:
no clock, no syscall, no extra collective); the watchdog thread samples the mark. This
script compares, in the same two processes and interleaved (ABBA), ``agree_flags`` with
the mark against the same function without it and against a bare ``all_reduce`` of the
same 1-element buffer, and times the mark alone in one process. It prints µs per call
(median and min-max over trials).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import timeit

import torch
import torch.distributed as dist

import distengine.distributed as idist
from distengine.distributed import agreement, hangs


def _unmarked_agree(flags: int, rt, buf: torch.Tensor) -> int:
    """``agree_flags`` as it was before hang detection (same checks, no in-flight mark)."""
    if isinstance(flags, bool) or not isinstance(flags, int):
        raise TypeError
    if not 0 <= flags < 2**63:
        raise ValueError
    buf.fill_(flags)
    dist.all_reduce(buf, op=dist.ReduceOp.BOR, group=rt.cpu_group)
    return int(buf.item())


def _job(local_rank: int, calls: int, trials: int) -> dict[str, list[float]]:
    rt = agreement._collective_runtime()
    buf = torch.zeros(1, dtype=torch.int64)
    candidates = {
        "agree_flags (hang mark)": lambda: idist.agree_flags(1),
        "agree_flags without the mark": lambda: _unmarked_agree(1, rt, buf),
        "bare all_reduce": lambda: dist.all_reduce(buf, op=dist.ReduceOp.BOR, group=rt.cpu_group),
    }
    names = list(candidates)
    times: dict[str, list[float]] = {n: [] for n in names}
    for fn in candidates.values():  # warm-up
        for _ in range(200):
            fn()
    for t in range(trials):
        order = names if t % 2 == 0 else names[::-1]
        for name in order:
            fn = candidates[name]
            dist.barrier(group=rt.cpu_group)
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - t0) / calls * 1e6)
    return times


def _mark_alone(number: int = 1_000_000) -> list[float]:
    w, ident = hangs.IN_FLIGHT, threading.get_ident

    def marked() -> None:
        w.seq += 1
        w.name = "agreement"
        w.thread = ident()
        try:
            pass
        finally:
            w.name = None

    def bare() -> None:
        try:
            pass
        finally:
            pass

    out = []
    for _ in range(5):
        a = timeit.timeit(marked, number=number)
        b = timeit.timeit(bare, number=number)
        out.append((a - b) / number * 1e9)
    return out


def _fmt(xs: list[float], unit: str = "") -> str:
    return f"{statistics.median(xs):.1f}{unit} ({min(xs):.1f}-{max(xs):.1f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--trials", type=int, default=8)
    args = p.parse_args()
    rank0 = idist.spawn(_job, 2, args=(args.calls, args.trials))[0]
    base = statistics.median(rank0["agree_flags without the mark"])
    print(
        f"2 gloo ranks, {args.calls} calls x {args.trials} interleaved trials, torch {torch.__version__}"
    )
    print("| call | µs per call | vs without the mark |")
    print("| --- | --- | --- |")
    for name, xs in rank0.items():
        print(f"| {name} | {_fmt(xs)} | {statistics.median(xs) / base:.3f} |")
    mark = _mark_alone()
    print(f"\nthe mark alone (one process, vs an empty try/finally): {_fmt(mark, ' ns')} per call")


if __name__ == "__main__":
    main()
