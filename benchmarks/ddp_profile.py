"""Where each microsecond of a DDP iteration goes, per rank, sampled in situ with py-spy.

Run: ``python benchmarks/ddp_profile.py [--framework distengine] [--tree DIR]``
(needs ``py-spy``: ``pip install py-spy``; the ``bench`` extra installs it).

Runs one framework's job of ``benchmarks/ddp_overhead.py`` (2 gloo ranks under torchrun,
the same CNN, data and batch) under ``py-spy record --subprocesses --idle`` and sorts the
samples of each rank's main thread taken inside the training loop into the parts of an
iteration: the batch (sampler, per-sample seeding, reads, collate), forward, backward
(which includes waiting for DDP's gradient all-reduce), optimizer step, metric updates,
the rank agreement, and the loop itself (the engine, its events and handlers). Idle
samples count too (``--idle``), so a wait in a collective is charged where it happens.
Each part is printed in microseconds per iteration (samples / rate / iterations), for
each rank. ``--tree DIR`` profiles distengine from another source tree (for example a
``git archive`` of an older commit) to compare before and after.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GLOBAL_BATCH = 128

# (part, pattern over the frames below the loop), first match wins
PARTS: list[tuple[str, str]] = [
    (
        "agreement (agree_flags / start_agreement / wait)",
        r"agree_flags|start_agreement|PendingAgreement\.wait",
    ),
    ("sync check", r"_sync_check"),
    ("batch: per-sample seeding", r"\.seed \(distengine/data/seeded|mix_seed|_seed_all"),
    (
        "batch: RNG states saved/compared/restored",
        r"\.(save|same|restore) \(distengine/data/seeded|_save_all|_restore_all",
    ),
    ("batch: dataset reads", r"__getitem__ \(torch/utils/data/dataset\.py"),
    ("batch: collate", r"collate"),
    ("batch: sampler, fetcher, loader", r"torch/utils/data/|distengine/data/|__next__"),
    ("metric updates", r"/metrics/"),
    ("zero_grad", r"zero_grad"),
    ("optimizer step", r"torch/optim/"),
    ("backward (incl. waiting for DDP's all-reduce)", r"Tensor\.backward|torch/autograd/__init__"),
    ("forward + loss", r"_call_impl|forward \(|_call_model|cross_entropy"),
]
# frames that put a sample inside a framework's training loop
LOOPS = {
    "hand-written": r"_hand_written_loop \(",
    "distengine": r"_loop \(distengine/engine/engine\.py",
    "ignite": r"_internal_run_as_gen \(ignite/engine/engine\.py",
    "lightning": r"fit_loop\.py",
    "accelerate": r"_accelerate_loop \(",
}


def _parse(path: Path, framework: str) -> dict[int, collections.Counter]:
    """Main-thread samples inside the loop, per worker pid, counted per part."""
    loop = re.compile(LOOPS[framework])
    parts = [(name, re.compile(rx)) for name, rx in PARTS]
    per_rank: dict[int, collections.Counter] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        # the worker: the last process (torchrun's own command line names the script too)
        worker = max((i for i, f in enumerate(frames) if f.startswith("process ")), default=None)
        if worker is None or worker + 1 >= len(frames) or "--worker" not in frames[worker]:
            continue
        body = frames[worker + 1 :]
        if not body[0].startswith("<module> ("):  # not the main thread
            continue
        pid = int(frames[worker].split()[1].rstrip(":").split(":")[0])
        at = next((i for i, f in enumerate(body) if loop.search(f)), None)
        if at is None:
            continue
        below = ";".join(body[at + 1 :])
        part = next(
            (name for name, rx in parts if rx.search(below)), "loop itself (engine, events)"
        )
        per_rank.setdefault(pid, collections.Counter())[part] += int(count)
    return per_rank


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", default="distengine", choices=sorted(LOOPS))
    p.add_argument("--samples", type=int, default=8192, help="samples per epoch")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rate", type=int, default=100, help="samples per second per process")
    p.add_argument("--tree", default=str(ROOT), help="source tree to import distengine from")
    p.add_argument("--keep", metavar="FILE", help="also keep py-spy's raw samples in FILE")
    args = p.parse_args()
    tree = Path(args.tree).resolve()
    out = Path(args.keep) if args.keep else Path(tempfile.mkstemp(suffix=".txt")[1])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    cmd = [
        "py-spy", "record", "--idle", "--nonblocking", "--subprocesses",
        "--rate", str(args.rate), "--format", "raw", "-o", str(out), "--",
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(ROOT / "benchmarks" / "ddp_overhead.py"), "--worker", args.framework,
        "--samples", str(args.samples), "--epochs", str(args.epochs),
    ]  # fmt: skip
    load_before = os.getloadavg()
    try:
        done = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, timeout=900)
    except FileNotFoundError:
        sys.exit("py-spy is not installed: pip install py-spy (or pip install -e .[bench])")
    rate = re.search(r'"samples_per_s": ([\d.]+)', done.stdout)
    if done.returncode != 0 or rate is None:
        sys.exit(f"the profiled job failed ({done.returncode}):\n{done.stderr[-3000:]}")
    iterations = -(-args.samples // GLOBAL_BATCH) * args.epochs
    per_rank = _parse(out, args.framework)
    if not args.keep:
        out.unlink()
    print(
        f"\n{args.framework} (distengine from {tree}), py-spy at {args.rate} Hz, {iterations} "
        f"iterations; rank 0 trained {float(rate.group(1)):.0f} samples/s under the profiler; "
        "load average before/after: "
        + " / ".join("/".join(f"{v:.2f}" for v in la) for la in (load_before, os.getloadavg()))
    )
    ranks = sorted(per_rank)
    names = [n for n, _ in PARTS] + ["loop itself (engine, events)"]
    print(
        "| part of an iteration | " + " | ".join(f"rank {r} (µs)" for r in range(len(ranks))) + " |"
    )
    print("| --- |" + " --- |" * len(ranks))
    for name in names:
        vals = [per_rank[pid][name] / args.rate / iterations * 1e6 for pid in ranks]
        if any(v >= 0.5 for v in vals):
            print(f"| {name} | " + " | ".join(f"{v:.0f}" for v in vals) + " |")
    totals = [sum(per_rank[pid].values()) / args.rate / iterations * 1e6 for pid in ranks]
    print("| **iteration** | " + " | ".join(f"**{v:.0f}**" for v in totals) + " |")


if __name__ == "__main__":
    main()
