"""Soak test of exact resume: random SIGKILL points, N trials, N bitwise-identical results.

Run: ``python benchmarks/soak_resume.py --trials 10 [--seed 0]``

Each trial launches tests/e2e/scripts/train_job.py under ``torchrun --standalone
--nproc_per_node=2 --max-restarts=1`` (gloo), kills a random rank at a random iteration
(mid-epoch included) with 0 or 2 DataLoader workers drawn at random, lets torchrun restart
the workers, and compares the final model and optimizer with an uninterrupted run.
Prints one line per trial and a summary ``N trials / N identical``. Every launch has a
timeout and its process tree is killed on the way out.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "e2e")]

from launching import _LAUNCHER_VARS, Launch  # noqa: E402

JOB = REPO / "tests" / "e2e" / "scripts" / "train_job.py"
TOTAL_ITERS = 24


def run_job(out: Path, name: str, *job_args: str, restarts: int = 0, timeout: float = 180) -> int:
    out.mkdir(parents=True, exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _LAUNCHER_VARS and not k.startswith(("TORCHELASTIC_", "PET_"))
    }
    env["OMP_NUM_THREADS"] = "1"
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        f"--max-restarts={restarts}",
        str(JOB),
        "--out",
        str(out),
        *job_args,
    ]
    job = Launch(args, env, out / f"{name}.log")
    try:
        return job.proc.wait(timeout=timeout)
    finally:
        job.kill()


def identical(a: Path, b: Path) -> bool:
    fa, fb = (torch.load(p / "final.pt", weights_only=True) for p in (a, b))
    if not all(torch.equal(fa["model"][k], fb["model"][k]) for k in fa["model"]):
        return False
    sa, sb = fa["optimizer"]["state"], fb["optimizer"]["state"]
    return all(
        torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])) for i in sa for k in sa[i]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=None, help="draws of fault points (default: random)")
    args = p.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    rng = random.Random(seed)
    print(f"soak: {args.trials} trials, fault-point seed {seed}")
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / "reference"
        assert run_job(ref, "ref") == 0, (ref / "ref.log").read_text()[-2000:]
        same = 0
        for t in range(args.trials):
            kill_rank, kill_at, workers = (
                rng.randrange(2),
                rng.randrange(1, TOTAL_ITERS),
                rng.choice([0, 2]),
            )
            out = Path(tmp) / f"trial{t}"
            t0 = time.perf_counter()
            rc = run_job(
                out,
                "trial",
                "--kill-rank",
                str(kill_rank),
                "--kill-at",
                str(kill_at),
                "--workers",
                str(workers),
                restarts=1,
            )
            fired = (out / "fault_fired").exists()
            ok = rc == 0 and fired and identical(out, ref)
            same += ok
            print(
                f"trial {t:3d}: kill rank {kill_rank} at iteration {kill_at:2d}, {workers} workers -> "
                f"exit {rc}, fault fired {fired}, {'IDENTICAL' if ok else 'DIFFERENT'} "
                f"({time.perf_counter() - t0:.1f} s)",
                flush=True,
            )
        print(f"\n{args.trials} trials / {same} identical")
        sys.exit(0 if same == args.trials else 1)


if __name__ == "__main__":
    main()
