"""A small FSDP training job for the end-to-end sharded-resume tests (torchrun, or alone).

The model (two blocks and dropout) is sharded with ``auto_model(sharding="fsdp")``; a
``Checkpoint`` every ``--ckpt-every`` iterations writes sharded checkpoints; the job
resumes from ``Checkpoint.latest`` when one exists. The dataset records what it reads in
``__getitem__`` (one file per rank, restart attempt and world size) and augments each
sample with noise. ``--kill-rank R --kill-at N`` SIGKILLs rank R at iteration N in attempt
0; ``--stop-at N`` terminates after iteration N; ``--dump-at N`` writes the gathered full
state at iteration N to ``{out}/saved_{N}.pt``. After loading a checkpoint the job writes
the gathered full state it loaded to ``{out}/loaded_ws{W}.pt``, and at the end the final
one to ``{out}/final.pt`` (model and optimizer, by parameter name).
"""

from __future__ import annotations

import argparse
import json
import os
import signal

import torch
from torch import nn

import distengine.distributed as idist
from distengine.engine import Events, create_supervised_trainer
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


class Net(nn.Module):
    def __init__(self, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(8, 15), nn.Linear(15, 1)])
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.blocks[1](self.drop(torch.relu(self.blocks[0](x))))


def full_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Model and optimizer state gathered whole (a collective), keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True) if idist.get_world_size() > 1 else None
    return {
        "model": get_model_state_dict(model, options=options),
        "optimizer": get_optimizer_state_dict(model, opt, options=options),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--ckpt-every", type=int, default=3)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--kill-rank", type=int, default=None)
    p.add_argument("--kill-at", type=int, default=None)
    p.add_argument("--stop-at", type=int, default=None)
    p.add_argument("--dump-at", type=int, default=None)
    args = p.parse_args()

    idist.initialize()
    rank, world = idist.get_rank(), idist.get_world_size()
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    tag = f"rank{rank}_attempt{attempt}_ws{world}"
    torch.manual_seed(0)
    model = idist.auto_model(Net(args.dropout), sharding="fsdp")
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    loader = idist.auto_dataloader(
        LoggedData(args.n, f"{args.out}/reads_{tag}.log"), batch_size=args.batch_size
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
    info = {"rank": rank, "attempt": attempt, "world": world, "latest": latest}
    if latest is not None:
        Checkpoint.load_objects(to_load=to_save, checkpoint=latest)
        loaded = full_state(model, opt)
        if rank == 0:
            torch.save(loaded, f"{args.out}/loaded_ws{world}.pt")
        sd = trainer.state_dict()
        info.update(resumed_iteration=sd["iteration"], pass_batches=sd["pass_batches"])

    if args.dump_at is not None and latest is None:

        @trainer.on(Events.ITERATION_COMPLETED(once=args.dump_at))
        def dump(_):
            state = full_state(model, opt)
            if rank == 0:
                torch.save(state, f"{args.out}/saved_{args.dump_at}.pt")

    if args.kill_at is not None and attempt == 0 and rank == args.kill_rank:

        @trainer.on(Events.ITERATION_COMPLETED(once=args.kill_at))
        def kill(_):
            with open(f"{args.out}/fault_fired", "w") as f:
                f.write(str(args.kill_at))
            os.kill(os.getpid(), signal.SIGKILL)

    if args.stop_at is not None and latest is None:
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED(once=args.stop_at), lambda e: e.terminate()
        )
    trainer.run(loader, max_epochs=args.epochs, seed=1234)
    final = full_state(model, opt)
    with open(f"{args.out}/info_{tag}.json", "w") as f:
        json.dump(info, f)
    if rank == 0:
        torch.save(final, f"{args.out}/final.pt")
    idist.finalize()


if __name__ == "__main__":
    main()
