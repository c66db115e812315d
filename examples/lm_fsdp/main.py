"""A small transformer language model sharded with FSDP2 through distengine: sharded
checkpoints, automatic resume (at any world size), exact distributed evaluation.

The data is a synthetic language made on the fly (``data.py``: sentences of a small
grammar, one token per character), so nothing is downloaded.

Commands (from the repository root):

    # CPU: 2 gloo ranks on this machine (about a minute on 2 cores)
    bash launchers/cpu.sh 2 examples/lm_fsdp/main.py --epochs 3

    # killed and resumed: torchrun restarts the ranks, the job continues from the newest
    # verified sharded checkpoint (bitwise identical to an uninterrupted run)
    MAX_RESTARTS=1 bash launchers/cpu.sh 2 examples/lm_fsdp/main.py --epochs 3 \
        --kill-at-iteration 50 --output-dir runs/lm_killed

    # the same run goes on on 3 ranks: the checkpoint reshards, every sample of an
    # interrupted pass is trained on exactly once
    bash launchers/cpu.sh 3 examples/lm_fsdp/main.py --epochs 4 --output-dir runs/lm_killed

    # one GPU node, every GPU (NCCL), bf16 parameters with fp32 gradient reduction, a larger model
    bash launchers/single_node.sh examples/lm_fsdp/main.py --d-model 512 --layers 8 --heads 8 \
        --block-size 256 --batch-size 256 --sentences 200000 --mixed-precision --epochs 5

    # one process, no launcher (the model stays whole; checkpoints keep the sharded layout)
    python examples/lm_fsdp/main.py --epochs 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from data import TextWindows, make_corpus  # noqa: E402
from model import TinyGPT  # noqa: E402

import distengine.distributed as idist  # noqa: E402
from distengine.engine import Events, create_supervised_evaluator, create_supervised_trainer  # noqa: E402
from distengine.handlers import Checkpoint, DiskSaver, ProgressBar, TerminateOnNan  # noqa: E402
from distengine.metrics import Accuracy, Loss, RunningAverage  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a small transformer LM with FSDP2.")
    p.add_argument("--output-dir", default="runs/lm_fsdp", help="checkpoints: a path or fsspec URL")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32, help="global batch (all ranks together)")
    p.add_argument("--block-size", type=int, default=64, help="characters per window")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--sentences", type=int, default=3000, help="sentences of training text")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--checkpoint-every", type=int, default=20, help="iterations between checkpoints"
    )
    p.add_argument("--async-save", action="store_true", help="write checkpoints in the background")
    p.add_argument(
        "--mixed-precision",
        action="store_true",
        help="FSDP2 bf16 parameters with fp32 gradient reduction (GPU)",
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


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-character cross-entropy over every position of the batch."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def per_token(output: tuple) -> tuple:
    """Evaluator output ``(logits [B,T,V], y [B,T])`` as ``([B*T, V], [B*T])``: metrics count tokens."""
    logits, y = output
    return logits.reshape(-1, logits.size(-1)), y.reshape(-1)


def main(args: argparse.Namespace) -> dict:
    idist.initialize()
    rank, world = idist.get_rank(), idist.get_world_size()
    device = idist.device()
    torch.manual_seed(args.seed)  # the same initial weights on every rank (then sharded)

    train_set = TextWindows(make_corpus(args.sentences, seed=args.seed), args.block_size)
    valid_set = TextWindows(
        make_corpus(max(200, args.sentences // 10), seed=args.seed + 1),
        args.block_size,
        alphabet=train_set.alphabet,
    )
    train_loader = idist.auto_dataloader(
        train_set, batch_size=args.batch_size, shuffle=True, drop_last=True
    )
    valid_loader = idist.auto_dataloader(valid_set, batch_size=args.batch_size, shuffle=False)

    fsdp_options = {}
    if args.mixed_precision:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        fsdp_options["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32
        )
    model = idist.auto_model(
        TinyGPT(
            train_set.vocab, args.block_size, args.d_model, args.layers, args.heads, args.dropout
        ),
        sharding="fsdp",  # every block a sharding unit, then the rest
        **fsdp_options,
    )
    # built from the sharded model: the optimizer's state is sharded as well
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    total = args.epochs * len(train_loader)
    warmup = max(1, len(train_loader) // 4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda it: (
            min(1.0, (it + 1) / warmup)
            * 0.5
            * (1 + math.cos(math.pi * min(1.0, it / max(1, total))))
        ),
    )
    trainer = create_supervised_trainer(model, optimizer, lm_loss, device=device)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda: scheduler.step())
    trainer.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan())
    RunningAverage(output_transform=lambda loss: loss).attach(trainer, "loss")
    evaluator = create_supervised_evaluator(
        model,
        device=device,
        metrics={
            "loss": Loss(lm_loss, output_transform=per_token),
            "accuracy": Accuracy(output_transform=per_token),
        },
    )
    if not args.no_progress:
        ProgressBar(persist=False).attach(trainer, metric_names=["loss"])

    history: list[dict] = []

    @trainer.on(Events.EPOCH_COMPLETED)
    def evaluate(engine):
        metrics = evaluator.run(valid_loader).metrics
        row = {
            "epoch": engine.state.epoch,
            "iteration": engine.state.iteration,
            "train_loss": float(engine.state.metrics["loss"]),
            "valid_loss": float(metrics["loss"]),
            "valid_perplexity": math.exp(float(metrics["loss"])),
            "valid_accuracy": float(metrics["accuracy"]),
        }
        history.append(row)
        if rank == 0:
            print(
                f"[lm] epoch {row['epoch']:3d}  iter {row['iteration']:5d}  "
                f"train loss {row['train_loss']:.3f}  valid loss {row['valid_loss']:.3f}  "
                f"perplexity {row['valid_perplexity']:.2f}  next-char accuracy "
                f"{row['valid_accuracy']:.3f}",
                flush=True,
            )

    out = args.output_dir.rstrip("/")
    to_save = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "trainer": trainer}
    checkpoint = Checkpoint(
        to_save, DiskSaver(f"{out}/checkpoints", require_empty=False), n_saved=2,
        async_save=args.async_save,
    )  # fmt: skip
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(every=args.checkpoint_every) | Events.EPOCH_COMPLETED, checkpoint
    )

    latest = Checkpoint.latest(f"{out}/checkpoints")
    resumed = latest is not None
    if resumed:
        # on every rank: each reads the shards it needs, whatever the world size of the save
        Checkpoint.load_objects(to_load=to_save, checkpoint=latest)
        if rank == 0:
            print(
                f"[lm] resumed from {latest} at iteration {trainer.state.iteration} "
                f"(world size {world})",
                flush=True,
            )
    elif rank == 0:
        params = sum(p.numel() for p in model.parameters())  # this rank's shards
        print(
            f"[lm] {len(train_set)} training windows of {args.block_size} characters, vocabulary "
            f"{train_set.vocab}; world size {world} ({idist.backend() or 'single process'}), "
            f"{params} parameters on rank 0 (sharded)",
            flush=True,
        )

    if args.kill_at_iteration is not None and not resumed and rank == args.kill_rank:

        @trainer.on(Events.ITERATION_COMPLETED(once=args.kill_at_iteration))
        def crash(_):
            os.kill(os.getpid(), signal.SIGKILL)

    if trainer.state.iteration >= total:
        if rank == 0:
            print(
                f"[lm] the run in {out} is already complete (iteration {trainer.state.iteration}); "
                "delete it, raise --epochs or pass another --output-dir to train again",
                flush=True,
            )
    else:
        trainer.run(train_loader, max_epochs=args.epochs, seed=args.seed)

    prompt = "the small "
    start = torch.tensor([train_set.encode(prompt)], device=device)
    sample = train_set.decode(model.generate(start, 60)[0].tolist())  # every rank: a collective
    final = {
        "iteration": trainer.state.iteration,
        "resumed": resumed,
        "history": history,
        "sample": sample,
    }
    if rank == 0:
        print(f"[lm] sample: {sample!r}", flush=True)
        print("[lm] FINAL " + json.dumps(final), flush=True)
    idist.finalize()
    return final


if __name__ == "__main__":
    main(parse_args())
