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


def _hand_written(ds, epochs: int, agree: bool = False) -> float:
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
            if agree:  # what the engine adds at world size > 1: one lockstep point
                idist.agree_flags(0)
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


def _loader_cost(ds, epochs: int) -> tuple[float, float]:
    """Seconds per batch to iterate the two loaders alone (no model)."""
    plain_sampler = torch.utils.data.distributed.DistributedSampler(ds, shuffle=True, seed=0)
    plain = torch.utils.data.DataLoader(ds, batch_size=64, sampler=plain_sampler)
    ours = idist.auto_dataloader(ds, batch_size=128, shuffle=True)
    out = []
    for loader in (plain, ours):
        t0 = time.perf_counter()
        batches = sum(1 for _ in range(epochs) for _ in loader)
        out.append((time.perf_counter() - t0) / batches)
    return out[0], out[1]


def _job(local_rank: int, n: int, epochs: int, trials: int):
    torch.set_num_threads(1)
    ds = _data(n)
    runs = {
        "hand": lambda: _hand_written(ds, epochs),
        "hand+agree": lambda: _hand_written(ds, epochs, agree=True),
        "ours": lambda: _distengine(ds, epochs),
    }
    times = {k: [] for k in runs}
    _hand_written(ds, 1)  # warm-up (allocator, gloo connections)
    for t in range(trials):  # ABBA order: no variant always runs first
        for k in list(runs) if t % 2 == 0 else list(reversed(runs)):
            times[k].append(runs[k]())
    return times, _agreement_cost(500), _loader_cost(ds, epochs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    n, epochs, trials = (1024, 1, 4) if args.quick else (2048, 2, 8)
    (times, agree, (plain_batch, ours_batch)), _ = idist.spawn(_job, 2, args=(n, epochs, trials))
    samples = n * epochs
    rates = {k: [samples / t for t in v] for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in rates.items()}

    def row(label: str, key: str) -> str:
        v = rates[key]
        return f"| {label} | {med[key]:.0f} ({min(v):.0f}-{max(v):.0f}) | {med[key] / med['hand']:.3f} |"

    print(
        f"\nDDP, 2 gloo ranks, small CNN, {n} CIFAR-shaped samples x {epochs} epochs, global batch 128, "
        f"median of {trials} ABBA-ordered trials (min-max)"
    )
    print("| loop | samples/s | vs hand-written |")
    print("| --- | --- | --- |")
    print(row("hand-written DDP loop", "hand"))
    print(row("hand-written + one agreement collective per iteration", "hand+agree"))
    print(row("distengine trainer + Loss + Accuracy + agreement", "ours"))
    print(
        f"throughput ratio distengine / hand-written: {med['ours'] / med['hand']:.3f} (target >= 0.97)"
    )
    print(
        f"agreement check alone: {agree * 1e3:.3f} ms per call (one 1-element all_reduce on gloo, ranks idle)"
    )
    print(
        f"loader alone, per batch of 64: plain {plain_batch * 1e3:.2f} ms, auto_dataloader (per-sample "
        f"seeding) {ours_batch * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main()
