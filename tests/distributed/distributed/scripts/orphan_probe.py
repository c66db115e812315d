"""A job that never ends by itself, to check that its workers die with their launcher.

    torchrun --standalone --nproc-per-node=2 orphan_probe.py OUT     # under torchrun's agent
    python orphan_probe.py OUT --spawn 2                             # idist.spawn's parent

Every rank writes its pid to ``OUT/rank{R}.pid`` and the pid of its DataLoader worker to
``OUT/rank{R}.loader.pid``, then trains forever (one agreement per iteration, epochs of 1000 iterations: no DataLoader
restart while the test watches, which could end an orphan for unrelated reasons). The
launcher (``OUT/launcher.pid`` for ``--spawn``) is then SIGKILLed by the test, which
checks that every one of these processes ends within a bound.
"""

import argparse
import os
import time
from pathlib import Path

import torch

import distengine.distributed as idist
from distengine.engine import Engine, Events


def _write(path: Path, value: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(value))
    os.replace(tmp, path)  # readers never see a half-written file


class _LoaderInit:
    def __init__(self, path: Path):
        self.path = path

    def __call__(self, worker_id: int) -> None:
        _write(self.path, os.getpid())


def train_forever(local_rank: int, out: str) -> None:
    rank = idist.get_rank()
    base = Path(out)
    ds = torch.utils.data.TensorDataset(torch.arange(4000.0))
    loader = idist.auto_dataloader(
        ds,
        batch_size=2 * idist.get_world_size(),
        num_workers=1,
        worker_init_fn=_LoaderInit(base / f"rank{rank}.loader.pid"),
    )
    trainer = Engine(lambda engine, batch: time.sleep(0.05))
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(once=5), lambda: _write(base / f"rank{rank}.pid", os.getpid())
    )
    trainer.run(loader, max_epochs=10_000, seed=0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--spawn", type=int, default=0, help="start this many ranks with idist.spawn")
    args = p.parse_args()
    if args.spawn:
        _write(Path(args.out) / "launcher.pid", os.getpid())
        idist.spawn(train_forever, args.spawn, args=(args.out,))
    else:
        train_forever(idist.get_local_rank(), args.out)


if __name__ == "__main__":
    main()
