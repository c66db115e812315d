"""Per-iteration overhead of Engine.run and create_supervised_trainer, vs Ignite and raw loops.

Run: ``python benchmarks/engine_overhead.py`` (add ``--quick`` for a short run).

Table 1: a no-op process function, 200,000 iterations, one handler on
ITERATION_COMPLETED(every=100); overhead = (engine time - bare loop time) / iterations.
Table 2: a tiny training step (Linear 8->1, batch 1, CPU, 5,000 iterations) through
``create_supervised_trainer`` vs a raw PyTorch loop (and Lightning when installed).
Each figure is the median of interleaved trials, with the min-max spread.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import warnings

import torch


def _bare_loop(data, n_iters):
    counter = 0
    t0 = time.perf_counter()
    for i, batch in enumerate(data):
        _ = batch
        if (i + 1) % 100 == 0:
            counter += 1
    return time.perf_counter() - t0


def _engine_loop(engine_cls, events, data):
    calls = []
    engine = engine_cls(lambda e, b: None)
    engine.add_event_handler(events.ITERATION_COMPLETED(every=100), lambda e: calls.append(1))
    t0 = time.perf_counter()
    engine.run(data, max_epochs=1)
    elapsed = time.perf_counter() - t0
    assert len(calls) == len(data) // 100
    return elapsed


def _fmt(values):
    med = statistics.median(values)
    return f"{med:8.2f} ({min(values):.2f}-{max(values):.2f})"


def bench_engine(n_iters, trials):
    from distengine.engine import Engine, Events

    systems = {"distengine": (Engine, Events)}
    try:
        from ignite.engine import Engine as IEngine
        from ignite.engine import Events as IEvents

        systems["ignite 0.5.5"] = (IEngine, IEvents)
    except ImportError:
        pass
    data = list(range(n_iters))
    per_iter = {name: [] for name in systems}
    for _ in range(trials):
        for name, (cls, ev) in systems.items():  # interleaved: noise hits all alike
            gc.collect()
            bare = _bare_loop(data, n_iters)
            run = _engine_loop(cls, ev, data)
            per_iter[name].append((run - bare) / n_iters * 1e6)
    print(
        f"\nEngine.run overhead per iteration, no-op step, {n_iters:,} iterations, "
        f"median of {trials} (min-max), microseconds"
    )
    print("| engine | overhead (us/iter) |")
    print("| --- | --- |")
    for name, vals in per_iter.items():
        print(f"| {name} | {_fmt(vals)} |")
    if "ignite 0.5.5" in per_iter:
        ratio = statistics.median(per_iter["ignite 0.5.5"]) / statistics.median(
            per_iter["distengine"]
        )
        print(f"ignite / distengine overhead ratio: {ratio:.1f}x (target >= 10x)")


def _tiny_setup():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.functional.mse_loss
    return model, opt, loss_fn


def _raw_train(data):
    model, opt, loss_fn = _tiny_setup()
    t0 = time.perf_counter()
    model.train()
    for x, y in data:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def _factory_train(factory, data):
    model, opt, loss_fn = _tiny_setup()
    trainer = factory(model, opt, loss_fn)
    t0 = time.perf_counter()
    trainer.run(data, max_epochs=1)
    return time.perf_counter() - t0


def _lightning_train(data):
    import logging

    import lightning as L  # noqa: N812

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):  # its banners
        logging.getLogger(name).setLevel(logging.ERROR)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model, self.opt, self.loss_fn = _tiny_setup()

        def training_step(self, batch, _):
            x, y = batch
            return self.loss_fn(self.model(x), y)

        def configure_optimizers(self):
            return self.opt

    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = torch.utils.data.DataLoader(data, batch_size=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's own deprecation notices
        t0 = time.perf_counter()
        trainer.fit(Module(), loader)
        return time.perf_counter() - t0


def bench_trainer(n_iters, trials):
    from distengine.engine import create_supervised_trainer

    g = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(1, 8, generator=g), torch.randn(1, 1, generator=g)) for _ in range(n_iters)
    ]
    runners = {"distengine": lambda: _factory_train(create_supervised_trainer, data)}
    try:
        from ignite.engine import create_supervised_trainer as ignite_factory

        runners["ignite 0.5.5"] = lambda: _factory_train(ignite_factory, data)
    except ImportError:
        pass
    try:
        import lightning  # noqa: F401

        runners["lightning"] = lambda: _lightning_train(data)
    except ImportError:
        pass
    raw_times, over = [], {k: [] for k in runners}
    for _ in range(trials):
        for name, fn in runners.items():
            gc.collect()
            raw = _raw_train(data)
            t = fn()
            raw_times.append(raw / n_iters * 1e6)
            over[name].append((t - raw) / n_iters * 1e6)
    print(
        f"\ncreate_supervised_trainer, Linear 8->1, batch 1, CPU, {n_iters:,} iterations, "
        f"median of {trials} (min-max), microseconds per iteration"
    )
    print(f"raw PyTorch step: {statistics.median(raw_times):.1f} us")
    print("| trainer | overhead over raw loop (us/iter) |")
    print("| --- | --- |")
    for name, vals in over.items():
        print(f"| {name} | {_fmt(vals)} |")
    if "ignite 0.5.5" in over:
        ratio = statistics.median(over["distengine"]) / statistics.median(over["ignite 0.5.5"])
        print(f"distengine overhead / ignite overhead: {ratio:.2f} (target <= 0.25)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer iterations and trials")
    args = p.parse_args()
    torch.set_num_threads(1)
    n, trials = (20_000, 3) if args.quick else (200_000, 5)
    bench_engine(n, trials)
    bench_trainer(1_000 if args.quick else 5_000, trials)


if __name__ == "__main__":
    main()
