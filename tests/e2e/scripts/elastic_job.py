"""A small training job for the elastic tests (launchers/elastic.sh on loopback).

It resumes from ``Checkpoint.latest`` when one exists and checkpoints every ``--ckpt-every``
iterations (a preemption signal also makes it checkpoint: that is how workers stop when
a node joins). Every worker process records, in files named after its pid:

- ``reads_{pid}.log``: the sample indices its ``__getitem__`` read, in order;
- ``info_{pid}.json``: node name (``ELASTIC_NODE``), rank, world size, its share of the
  global batch, where it resumed, and how it ended.

Faults: ``--kill-node NAME --kill-at N``: at iteration N, at world size 2, the worker on
node NAME SIGKILLs its torchrun agent and then itself (the node is gone).
``--hold-at N``: at world size 1 under an agent, the worker stops at iteration N and waits
for its agent's SIGTERM (a node joined), then stops for preemption as usual.
Without a launcher it runs as one process: the uninterrupted reference.
At the end, rank 0 writes the final model and optimizer state to ``{out}/final.pt``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading

import torch

import distengine.distributed as idist
from distengine.engine import Events, create_supervised_trainer
from distengine.engine.preemption import Preempted
from distengine.handlers import Checkpoint, DiskSaver


class LoggedData(torch.utils.data.Dataset):
    def __init__(self, n: int, log_path: str):
        g = torch.Generator().manual_seed(7)
        self.x = torch.randn(n, 8, generator=g)
        self.y = (self.x.sum(1, keepdim=True) > 0).float()
        self.log_path = log_path

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        with open(self.log_path, "a") as f:  # recorded where data is read
            f.write(f"{i}\n")
        return self.x[i] + 0.05 * torch.randn(8), self.y[i]  # random augmentation


def _hold_until_sigterm(engine) -> None:
    """Waits (in the main thread, so Python runs signal handlers) for the agent's SIGTERM."""
    got = threading.Event()
    engine_handler = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        got.set()
        engine_handler(signum, frame)  # the engine's preemption handler

    signal.signal(signal.SIGTERM, on_term)
    try:
        got.wait(timeout=120)
    finally:
        signal.signal(signal.SIGTERM, engine_handler)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--samples", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--ckpt-every", type=int, default=3)
    p.add_argument("--kill-node", default=None)
    p.add_argument("--kill-at", type=int, default=None)
    p.add_argument("--hold-at", type=int, default=None)
    args = p.parse_args()

    idist.initialize()
    rank, world = idist.get_rank(), idist.get_world_size()
    node = os.environ.get("ELASTIC_NODE", "solo")
    under_agent = "TORCHELASTIC_RUN_ID" in os.environ
    pid = os.getpid()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    model = idist.auto_model(net)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loader = idist.auto_dataloader(
        LoggedData(args.samples, f"{args.out}/reads_{pid}.log"), batch_size=args.batch_size
    )
    trainer = create_supervised_trainer(
        model, opt, torch.nn.functional.binary_cross_entropy_with_logits
    )
    to_save = {"model": model, "optimizer": opt, "trainer": trainer}
    ckpt_dir = f"{args.out}/ckpt"
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(every=args.ckpt_every),
        Checkpoint(to_save, DiskSaver(ckpt_dir, require_empty=False), n_saved=2),
    )
    latest = Checkpoint.latest(ckpt_dir)
    info = {
        "node": node,
        "rank": rank,
        "world": world,
        "restart": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
        "share": loader.sampler.rank_batch_size,
        "loss_weight": loader.sampler.batch_geometry(0)[2],
        "resumed_iteration": None,
        "ended": "running",
    }
    if latest is not None:
        Checkpoint.load_objects(to_load=to_save, checkpoint=latest)
        info["resumed_iteration"] = trainer.state.iteration
        info["cursor"] = trainer.state_dict()["cursor"]

    def write_info() -> None:
        info["last_iteration"] = trainer.state.iteration
        tmp = f"{args.out}/info_{pid}.tmp"
        with open(tmp, "w") as f:
            json.dump(info, f)
        os.replace(tmp, f"{args.out}/info_{pid}.json")

    write_info()  # a worker that is killed keeps this "running" record

    if args.kill_at is not None and node == args.kill_node and world == 2:

        @trainer.on(Events.ITERATION_COMPLETED(once=args.kill_at))
        def kill_node(_):
            with open(f"{args.out}/killed_at", "w") as f:
                f.write(str(args.kill_at))
            os.kill(os.getppid(), signal.SIGKILL)  # the torchrun agent of this node
            os.kill(pid, signal.SIGKILL)

    if args.hold_at is not None and under_agent and world == 1:

        @trainer.on(Events.ITERATION_COMPLETED(once=args.hold_at))
        def hold(engine):
            with open(f"{args.out}/holding", "w") as f:
                f.write(str(args.hold_at))
            _hold_until_sigterm(engine)

    try:
        trainer.run(loader, max_epochs=args.epochs, seed=1234)
    except Preempted:
        info["ended"] = "preempted"
        write_info()
        raise
    info["ended"] = "completed"
    write_info()
    if rank == 0:
        net = model.module if hasattr(model, "module") else model
        torch.save(
            {"model": net.state_dict(), "optimizer": opt.state_dict()}, f"{args.out}/final.pt"
        )
    idist.finalize()


if __name__ == "__main__":
    main()
