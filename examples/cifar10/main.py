"""CIFAR-10 with distengine: DDP training, exact distributed evaluation, checkpoints and
automatic resume. Reads the standard ``cifar-10-batches-py`` files from ``--data-dir``
when they are there; otherwise trains on a synthetic, learnable CIFAR-shaped data set.

Commands (from the repository root):

    # CPU: 2 gloo ranks on this machine (what the README's main-job command runs)
    bash launchers/cpu.sh 2 examples/cifar10/main.py --epochs 3

    # one GPU node, every GPU (NCCL, AMP), real data, a wider model
    bash launchers/single_node.sh examples/cifar10/main.py --data-dir /data --width 64 --epochs 30

    # several nodes: run on every node (NODE_RANK 0..NNODES-1, RDZV_ENDPOINT=host:port of node 0)
    NNODES=2 NODE_RANK=0 RDZV_ENDPOINT=node0:29400 bash launchers/multi_node.sh examples/cifar10/main.py --data-dir /data

    # SLURM (requeues itself on preemption)
    sbatch launchers/slurm.sbatch examples/cifar10/main.py --data-dir /data

    # resume after a crash or preemption: run the same command again; it continues from
    # the newest verified checkpoint in --output-dir (bitwise identical on the same world size)

    # one process, no launcher
    python examples/cifar10/main.py --epochs 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from data import make_datasets  # noqa: E402
from model import SmallResNet  # noqa: E402

import distengine.distributed as idist  # noqa: E402
from distengine.engine import Events, create_supervised_evaluator, create_supervised_trainer  # noqa: E402
from distengine.handlers import Checkpoint, CSVLogger, DiskSaver, ProgressBar, TerminateOnNan  # noqa: E402
from distengine.handlers.base_logger import global_step_from_engine  # noqa: E402
from distengine.metrics import Accuracy, Loss, RunningAverage  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a small ResNet on CIFAR-10 with distengine.")
    p.add_argument(
        "--data-dir", default=os.environ.get("CIFAR10_DIR"), help="folder with cifar-10-batches-py"
    )
    p.add_argument(
        "--output-dir", default="runs/cifar10", help="checkpoints and logs: a path or fsspec URL"
    )
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64, help="global batch (all ranks together)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--width", type=int, default=16, help="channels of the first stage (64 on GPU)")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument(
        "--synthetic-size", type=int, default=4000, help="training images when synthetic"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--checkpoint-every", type=int, default=20, help="iterations between checkpoints"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--kill-at-iteration",
        type=int,
        default=None,
        help="test hook: SIGKILL rank --kill-rank at this iteration of a fresh run",
    )
    p.add_argument("--kill-rank", type=int, default=1)
    return p.parse_args(argv)


def warmup_cosine(total_iters: int, warmup: int) -> callable:
    def factor(it: int) -> float:
        if it < warmup:
            return (it + 1) / warmup
        progress = (it - warmup) / max(1, total_iters - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def main(args: argparse.Namespace) -> dict:
    idist.initialize()
    rank, world = idist.get_rank(), idist.get_world_size()
    device = idist.device()
    cuda = device.type == "cuda"
    torch.manual_seed(args.seed)  # same initial weights everywhere (DDP also broadcasts rank 0's)

    train_set, test_set, description = make_datasets(
        args.data_dir, args.synthetic_size, seed=args.seed
    )
    if rank == 0:
        print(
            f"[cifar10] data: {description}; world size {world} ({idist.backend() or 'single process'}), "
            f"device {device}",
            flush=True,
        )
    train_loader = idist.auto_dataloader(
        train_set,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.num_workers,
        drop_last=True,
    )
    test_loader = idist.auto_dataloader(
        test_set, batch_size=2 * args.batch_size, shuffle=False, num_workers=args.num_workers
    )

    model = idist.auto_model(SmallResNet(width=args.width))
    optimizer = idist.auto_optim(
        torch.optim.SGD(
            model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
    )
    total = args.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total, warmup=len(train_loader) // 2)
    )
    loss_fn = torch.nn.CrossEntropyLoss()

    trainer = create_supervised_trainer(
        model, optimizer, loss_fn, device=device, amp_mode="amp" if cuda else None, scaler=cuda
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda: scheduler.step())
    trainer.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan())
    RunningAverage(output_transform=lambda loss: loss).attach(trainer, "loss")
    evaluator = create_supervised_evaluator(
        model,
        device=device,
        metrics={"accuracy": Accuracy(), "loss": Loss(loss_fn)},
        amp_mode="amp" if cuda else None,
    )
    if not args.no_progress:
        ProgressBar(persist=False).attach(trainer, metric_names=["loss"])

    history: list[dict] = []
    out = args.output_dir.rstrip("/")
    csv = CSVLogger(f"{out}/metrics.csv", append=True)

    @trainer.on(Events.EPOCH_COMPLETED)
    def evaluate(engine):
        metrics = evaluator.run(test_loader).metrics
        row = {
            "epoch": engine.state.epoch,
            "iteration": engine.state.iteration,
            "train_loss": float(engine.state.metrics["loss"]),
            "test_loss": float(metrics["loss"]),
            "test_accuracy": float(metrics["accuracy"]),
            "lr": optimizer.param_groups[0]["lr"],
        }
        history.append(row)
        if rank == 0:
            print(
                f"[cifar10] epoch {row['epoch']:3d}  iter {row['iteration']:6d}  "
                f"train loss {row['train_loss']:.4f}  test loss {row['test_loss']:.4f}  "
                f"test accuracy {row['test_accuracy']:.4f}  lr {row['lr']:.4f}",
                flush=True,
            )

    csv.attach_output_handler(trainer, Events.EPOCH_COMPLETED, tag="train", metric_names=["loss"])
    csv.attach_output_handler(
        evaluator,
        Events.COMPLETED,
        tag="test",
        metric_names="all",
        global_step_transform=global_step_from_engine(trainer),
    )
    csv.attach_opt_params_handler(trainer, Events.EPOCH_COMPLETED, optimizer)

    to_save = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "trainer": trainer}
    saver = DiskSaver(f"{out}/checkpoints", require_empty=False)
    checkpoint = Checkpoint(to_save, saver, filename_prefix="train", n_saved=2)
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(every=args.checkpoint_every) | Events.EPOCH_COMPLETED, checkpoint
    )

    latest = Checkpoint.latest(f"{out}/checkpoints", filename_prefix="train")
    resumed = latest is not None
    if resumed:
        Checkpoint.load_objects(to_load=to_save, checkpoint=latest, map_location=device)
        if rank == 0:
            print(
                f"[cifar10] resumed from {latest} at iteration {trainer.state.iteration}",
                flush=True,
            )

    if args.kill_at_iteration is not None and not resumed and rank == args.kill_rank:

        @trainer.on(Events.ITERATION_COMPLETED(once=args.kill_at_iteration))
        def crash(_):
            os.kill(os.getpid(), signal.SIGKILL)

    if trainer.state.iteration >= args.epochs * len(train_loader):
        if rank == 0:
            print(
                f"[cifar10] the run in {out} is already complete (iteration {trainer.state.iteration}); "
                "delete it or pass another --output-dir to train again",
                flush=True,
            )
    else:
        trainer.run(train_loader, max_epochs=args.epochs, seed=args.seed)
    csv.close()
    final = {"iteration": trainer.state.iteration, "resumed": resumed, "history": history}
    if rank == 0:
        print("[cifar10] FINAL " + json.dumps(final), flush=True)
    idist.finalize()
    return final


if __name__ == "__main__":
    main(parse_args())
