"""A tiny job for the launcher tests: each rank records what the launcher gave it.

Every rank initializes ``distengine.distributed``, checks an ``all_reduce`` and writes
``{out}/rank{RANK}.json`` with its rank, world size, node count, the all-reduced sum and the
torchrun settings it sees. Options make it exit with a chosen status, or wait for SIGUSR1 or
SIGTERM and then exit with the preemption status, standing in for a distengine trainer that
has written its checkpoint (the launchers are under test here, not the engine).

    bash launchers/cpu.sh 2 tests/e2e/scripts/launch_probe.py --out /tmp/probe
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch

import distengine.distributed as idist

PREEMPT_SIGNALS = {signal.SIGUSR1, signal.SIGTERM}


def _write_json(path: Path, record: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)  # readers never see a half-written record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for the per-rank records")
    parser.add_argument(
        "--tag", default="", help="copied into the record (checks argument pass-through)"
    )
    parser.add_argument(
        "--exit-code", type=int, default=0, help="status to exit with after recording"
    )
    parser.add_argument(
        "--exit-rank", type=int, default=None, help="only this rank exits with --exit-code"
    )
    parser.add_argument(
        "--wait-signal",
        type=float,
        default=0.0,
        help="after recording, wait up to this many seconds for SIGUSR1/SIGTERM, then exit "
        "with DISTENGINE_PREEMPT_EXIT (status 3 if none came)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    if args.wait_signal:
        # Blocked before anything else, so a signal that comes early stays pending for sigtimedwait.
        signal.pthread_sigmask(signal.SIG_BLOCK, PREEMPT_SIGNALS)

    idist.initialize()
    rank, world_size = idist.get_rank(), idist.get_world_size()
    total = idist.all_reduce(
        torch.tensor([float(rank + 1)], device=idist.device())
    )  # NCCL needs a GPU tensor
    record = {
        "rank": rank,
        "world_size": world_size,
        "local_rank": idist.get_local_rank(),
        "nnodes": idist.get_nnodes(),
        "backend": idist.backend(),
        "all_reduce_sum": float(torch.as_tensor(total).sum()),
        "tag": args.tag,
        "pid": os.getpid(),
        "max_restarts": os.environ.get("TORCHELASTIC_MAX_RESTARTS"),
        "signals_to_handle": os.environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE"),
        "signal": None,
    }
    path = out / f"rank{rank}.json"
    _write_json(path, record)

    status = args.exit_code if args.exit_rank in (None, rank) else 0
    if args.wait_signal:
        info = signal.sigtimedwait(PREEMPT_SIGNALS, args.wait_signal)
        record["signal"] = signal.Signals(info.si_signo).name if info is not None else None
        _write_json(path, record)
        status = int(os.environ.get("DISTENGINE_PREEMPT_EXIT", "75")) if info is not None else 3
    idist.finalize()
    return status


if __name__ == "__main__":
    sys.exit(main())
