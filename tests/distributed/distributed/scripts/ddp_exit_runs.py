"""Runs a short 2-rank DDP job many times; every rank must leave through a clean interpreter exit.

    python ddp_exit_runs.py RUNS [--no-release]

Each rank is a child forked from this launcher, which imports torch once, so a run costs
the job and not the import. A child leaves through ``sys.exit(0)``: the full interpreter
shutdown (atexit hooks, finalization) where torch 2.13 can abort with "terminate called
without an active exception" (docs/internals.md, "Platform facts"). Run ``i`` ends the job in one of three
ways, by ``i % 3``: ``idist.finalize()``; nothing (distengine's exit hook finalizes); inside
``with idist.Parallel() as p: p.run(...)`` (which initializes and finalizes under a launcher).

Each rank also checks, in an exit hook that runs after distengine's, that gloo's worker
threads (``pt_gloo_runloop``) are gone: their late release of a backward-pass work is what
aborts. Exit status 3 means they were still alive. ``--no-release`` skips distengine's
release of the DDP module (negative control: the check must then fail).

Prints ``run I: [status of rank 0, status of rank 1]`` per run.
"""

import atexit
import os
import socket
import sys
import time

import torch
import torch._dynamo  # noqa: F401  (DDP imports it on first use, ~3 s: pay it once, before forking)
from torch.utils.data import DataLoader, TensorDataset

import distengine.distributed as idist
from distengine.distributed import runtime

GLOO_THREAD = "pt_gloo"
_ALIVE_UNTIL_EXIT: list[object] = []  # as in a script whose model is a module global


def _threads() -> list[str]:
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass
    return names


def _check_gloo_threads_gone() -> None:
    left = [n for n in _threads() if n.startswith(GLOO_THREAD)]
    if left:
        print(f"gloo threads alive after finalize: {left}", file=sys.stderr, flush=True)
        os._exit(3)


def _train(local_rank: int) -> None:
    torch.manual_seed(local_rank)
    model = idist.auto_model(torch.nn.Linear(8, 4))
    _ALIVE_UNTIL_EXIT.append(model)
    opt = idist.auto_optim(torch.optim.SGD(model.parameters(), lr=0.1))
    loader = DataLoader(TensorDataset(torch.randn(64, 8)), batch_size=4)
    for (x,) in loader:
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    assert any(n.startswith(GLOO_THREAD) for n in _threads()), "the exit check must be able to fail"


def _job(rank: int, port: int, ending: int, release: bool) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    # Registered before distengine's own exit hook, so it runs after it.
    atexit.register(_check_gloo_threads_gone)
    if not release:
        runtime.release_ddp_modules = lambda: 0
    if ending == 2:
        with idist.Parallel() as parallel:
            parallel.run(_train)
        return
    _train(rank)
    if ending == 0:
        idist.finalize()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    runs = int(sys.argv[1])
    release = "--no-release" not in sys.argv
    for i in range(runs):
        t_run = time.time()
        port = _free_port()
        pids = []
        for rank in range(2):
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _job(rank, port, ending=i % 3, release=release)
                sys.exit(0)  # unwinds to the interpreter: a normal, full exit
            pids.append(pid)
        statuses = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
        print(f"run {i}: {statuses}", round(time.time() - t_run, 2), flush=True)


if __name__ == "__main__":
    main()
