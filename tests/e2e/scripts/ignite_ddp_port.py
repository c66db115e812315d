"""An Ignite DDP training script, ported by switching its imports from ``ignite`` to
``distengine`` and nothing else (run under ``torchrun --nproc_per_node=2``).

It is written the way Ignite's examples are: ``idist.Parallel``, ``auto_dataloader``,
``auto_model``, ``auto_optim``, ``create_supervised_trainer``/``_evaluator``, metrics,
``manual_seed(seed + rank)`` and ``trainer.run(loader, max_epochs=...)`` with no ``seed=``.
The only additions are what the test reads: the dataset records the indices it reads
(one file per rank), and rank 0 writes the final weights and metrics to ``--out``.
``--no-manual-seed`` is the negative control: the script without its seeding call.
"""

import argparse
import json
import os

import torch
from torch import nn

import distengine.distributed as idist
from distengine.engine import Events, create_supervised_evaluator, create_supervised_trainer
from distengine.metrics import Accuracy, Loss
from distengine.utils import manual_seed, setup_logger


class NoisyBlobs(torch.utils.data.Dataset):
    """Two classes of 8-d points; each read adds random noise (an augmentation)."""

    def __init__(self, n, seed, log_path=None):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = (self.x[:, :4].sum(1) > 0).long()
        self.log_path = log_path

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(f"{i}\n")
        return self.x[i] + 0.1 * torch.randn(8), self.y[i]


def training(local_rank, config):
    rank = idist.get_rank()
    if config["manual_seed"]:
        manual_seed(config["seed"] + rank)
    logger = setup_logger(name="port")
    out = config["out"]

    reads = os.path.join(out, f"reads_rank{rank}.log")
    train_loader = idist.auto_dataloader(
        NoisyBlobs(200, seed=1, log_path=reads),
        batch_size=32,
        num_workers=2,
        shuffle=True,
    )
    val_loader = idist.auto_dataloader(NoisyBlobs(64, seed=2), batch_size=64, shuffle=False)

    model = idist.auto_model(
        nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))
    )
    optimizer = idist.auto_optim(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    criterion = nn.CrossEntropyLoss()

    trainer = create_supervised_trainer(model, optimizer, criterion, device=idist.device())
    evaluator = create_supervised_evaluator(
        model, metrics={"accuracy": Accuracy(), "loss": Loss(criterion)}, device=idist.device()
    )

    @trainer.on(Events.EPOCH_COMPLETED)
    def validate(engine):
        metrics = evaluator.run(val_loader).metrics
        logger.info(f"epoch {engine.state.epoch}: {metrics}")

    trainer.run(train_loader, max_epochs=config["epochs"])

    if rank == 0:
        weights = {k: v.detach().cpu() for k, v in model.module.state_dict().items()}
        torch.save(weights, os.path.join(out, "final.pt"))
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump({k: float(v) for k, v in evaluator.state.metrics.items()}, f)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--no-manual-seed", dest="manual_seed", action="store_false")
    config = vars(parser.parse_args())

    with idist.Parallel(backend="gloo") as parallel:
        parallel.run(training, config)
