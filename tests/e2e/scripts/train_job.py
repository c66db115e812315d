"""A small training job for the end-to-end resume tests (run under torchrun).

It resumes from ``Checkpoint.latest`` when one exists, checkpoints every
``--ckpt-every`` iterations, and records what it reads in the dataset's ``__getitem__``
(one file per rank and restart attempt). Fault injection: ``--kill-rank R --kill-at N``
SIGKILLs rank R at iteration N, only in attempt 0 (a marker file says it fired).
``--no-restore`` is the negative control: it ignores existing checkpoints.
At the end, rank 0 writes the final model and optimizer state to ``{out}/final.pt``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal

import torch

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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--ckpt-every", type=int, default=3)
    p.add_argument("--kill-rank", type=int, default=None)
    p.add_argument("--kill-at", type=int, default=None)
    p.add_argument(
        "--restore",
        choices=["full", "ignite"],
        default="full",
        help="ignite: negative control, restore weights and Ignite's counters only",
    )
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument(
        "--stop-at", type=int, default=None, help="terminate() after this iteration (attempt 0)"
    )
    p.add_argument(
        "--signal-at", type=int, default=None, help="SIGTERM rank --fault-rank at this iteration"
    )
    p.add_argument(
        "--raise-at", type=int, default=None, help="raise on rank --fault-rank at this iteration"
    )
    p.add_argument("--fault-rank", type=int, default=1)
    p.add_argument(
        "--write-fault",
        default=None,
        help="DISTENGINE_FAULT_INJECT value for the writer (rank 0), attempt 0 only",
    )
    args = p.parse_args()

    idist.initialize()
    rank, world = idist.get_rank(), idist.get_world_size()
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    tag = f"rank{rank}_attempt{attempt}_ws{world}"
    if args.write_fault and attempt == 0 and rank == 0:
        os.environ["DISTENGINE_FAULT_INJECT"] = args.write_fault
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.Dropout(args.dropout), torch.nn.Linear(16, 1)
    )
    model = idist.auto_model(net)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loader = idist.auto_dataloader(
        LoggedData(args.n, f"{args.out}/reads_{tag}.log"),
        batch_size=args.batch_size,
        num_workers=args.workers,
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
        if args.restore == "ignite":
            # negative control: restore only what Ignite restores (weights, optimizer, Ignite's
            # counters); the pass restarts at its first batch and no per-rank RNG state is kept
            Checkpoint.load_objects(
                to_load={"model": model, "optimizer": opt}, checkpoint=latest, strict=False
            )
            saved = torch.load(latest, weights_only=True)["trainer"]
            trainer.load_state_dict(
                {
                    **{k: saved[k] for k in ("iteration", "epoch_length", "max_epochs", "seed")},
                    "data_pass": saved["data_pass"],
                    "pass_batches": 0,
                    "cursor": 0,
                }
            )
        else:
            Checkpoint.load_objects(to_load=to_save, checkpoint=latest)
        sd = trainer.state_dict()
        info.update(
            resumed_iteration=sd["iteration"],
            pass_batches=sd["pass_batches"],
            cursor=sd["cursor"],
            epoch_length=sd["epoch_length"],
        )

    trained = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: trained.append(e.state.iteration)
    )
    if args.kill_at is not None and attempt == 0 and rank == args.kill_rank:

        @trainer.on(Events.ITERATION_COMPLETED(once=args.kill_at))
        def kill(_):
            with open(f"{args.out}/fault_fired", "w") as f:
                f.write(str(args.kill_at))
            os.kill(os.getpid(), signal.SIGKILL)

    if args.stop_at is not None and attempt == 0:
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED(once=args.stop_at), lambda e: e.terminate()
        )
    if args.signal_at is not None and latest is None and rank == args.fault_rank:
        trainer.add_event_handler(
            Events.ITERATION_STARTED(once=args.signal_at),
            lambda: os.kill(os.getpid(), signal.SIGTERM),
        )
    if args.raise_at is not None and attempt == 0 and rank == args.fault_rank:

        @trainer.on(Events.ITERATION_COMPLETED(once=args.raise_at))
        def fail(_):
            raise RuntimeError(f"injected failure on rank {rank} at iteration {args.raise_at}")

    trainer.run(loader, max_epochs=args.epochs, seed=1234)
    info["iterations"] = trained[:1] + trained[-1:]
    with open(f"{args.out}/info_{tag}.json", "w") as f:
        json.dump(info, f)
    if rank == 0:
        net = model.module if hasattr(model, "module") else model
        torch.save(
            {"model": net.state_dict(), "optimizer": opt.state_dict()}, f"{args.out}/final.pt"
        )
    idist.finalize()


if __name__ == "__main__":
    main()
