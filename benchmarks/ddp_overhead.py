"""distengine's DDP trainer vs a hand-written DDP loop, 2 gloo ranks, same small CNN.

Run: ``python benchmarks/ddp_overhead.py [--quick]``

Both sides train the same CNN on synthetic CIFAR-shaped data (global batch 128, 64 per
rank): the hand-written loop uses ``DistributedSampler`` + ``set_epoch`` + forward /
backward / step; distengine uses ``auto_dataloader`` + ``create_supervised_trainer`` with
``Loss`` and ``Accuracy`` attached and rank agreement on (one small collective per
iteration). Trials alternate between the two in the same processes (ABBA order); the table gives
samples/s (median and min-max over trials) and the ratio, plus the measured cost of one
agreement collective.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist

import distengine.distributed as idist
from distengine.engine import create_supervised_trainer
from distengine.metrics import Accuracy, Loss


def _cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 8 * 8, 10),
    )


def _data(n: int) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(
        torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    )


def _hand_written(ds, epochs: int) -> float:
    model = torch.nn.parallel.DistributedDataParallel(_cnn())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sampler = torch.utils.data.distributed.DistributedSampler(ds, shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, sampler=sampler)
    dist.barrier()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
    dist.barrier()
    elapsed = time.perf_counter() - t0
    del model
    return elapsed


def _distengine(ds, epochs: int) -> float:
    model = idist.auto_model(_cnn())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = idist.auto_dataloader(ds, batch_size=128, shuffle=True)
    trainer = create_supervised_trainer(
        model,
        opt,
        torch.nn.functional.cross_entropy,
        output_transform=lambda x, y, y_pred, loss: {
            "y_pred": y_pred.detach(),
            "y": y,
            "loss": loss.detach(),
        },
    )
    Accuracy(output_transform=lambda o: (o["y_pred"], o["y"])).attach(trainer, "accuracy")
    Loss(
        torch.nn.functional.cross_entropy, output_transform=lambda o: (o["y_pred"], o["y"])
    ).attach(trainer, "loss")
    dist.barrier()
    t0 = time.perf_counter()
    trainer.run(loader, max_epochs=epochs, seed=0)
    dist.barrier()
    elapsed = time.perf_counter() - t0
    del model, trainer
    return elapsed


def _agreement_cost(n: int) -> float:
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(n):
        idist.agree_flags(0)
    return (time.perf_counter() - t0) / n


def _job(local_rank: int, n: int, epochs: int, trials: int):
    torch.set_num_threads(1)
    ds = _data(n)
    hand, ours = [], []
    _hand_written(ds, 1)  # warm-up (allocator, gloo connections)
    for t in range(trials):  # ABBA order: neither side always runs first
        if t % 2 == 0:
            hand.append(_hand_written(ds, epochs))
            ours.append(_distengine(ds, epochs))
        else:
            ours.append(_distengine(ds, epochs))
            hand.append(_hand_written(ds, epochs))
    return hand, ours, _agreement_cost(500)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    n, epochs, trials = (1024, 1, 4) if args.quick else (2048, 2, 8)
    (hand, ours, agree), _ = idist.spawn(_job, 2, args=(n, epochs, trials))
    samples = n * epochs
    h = [samples / t for t in hand]
    o = [samples / t for t in ours]
    ratios = [b / a for a, b in zip(h, o)]
    print(
        f"\nDDP, 2 gloo ranks, small CNN, {n} CIFAR-shaped samples x {epochs} epochs, global batch 128, "
        f"median of {trials} alternating trials (min-max)"
    )
    print("| loop | samples/s |")
    print("| --- | --- |")
    print(f"| hand-written DDP loop | {statistics.median(h):.0f} ({min(h):.0f}-{max(h):.0f}) |")
    print(
        f"| distengine trainer + Loss + Accuracy + agreement | {statistics.median(o):.0f} ({min(o):.0f}-{max(o):.0f}) |"
    )
    print(
        f"throughput ratio distengine / hand-written: {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f}; target >= 0.97)"
    )
    print(f"agreement check: {agree * 1e3:.3f} ms per iteration (one 1-element all_reduce on gloo)")


if __name__ == "__main__":
    main()
