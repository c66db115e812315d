"""DDP throughput of the same job in every framework, relative to a hand-written DDP loop.

Run: ``python benchmarks/ddp_overhead.py [--rounds 10] [--quick]``

The job: a small CNN on synthetic CIFAR-shaped data (3x32x32, 10 classes), 2 gloo ranks
under torchrun, global batch 128 (64 per rank), ``torch.set_num_threads(1)``, 2 epochs,
SGD with momentum. Each framework runs it as its users write it:

- ``hand-written``: ``DistributedSampler`` + ``set_epoch`` + forward/backward/step on a
  ``DistributedDataParallel`` model;
- ``distengine``: ``idist.auto_dataloader`` / ``auto_model`` + ``create_supervised_trainer``
  with ``Loss`` and ``Accuracy`` attached (rank agreement, exact-resume sampler, per-sample
  seeding and exact metrics all on);
- ``ignite``: the same script with ``ignite`` imports (plus the ``set_epoch`` handler an
  Ignite user adds), when pytorch-ignite is installed;
- ``lightning``: a ``LightningModule`` and ``Trainer(strategy="ddp")``, when installed
  (``pip install -e .[bench]``);
- ``accelerate``: ``Accelerator().prepare`` + ``accelerator.backward``, when installed.

Lightning and Accelerate run without metrics (their plain training loop): the strongest
version of each peer. Every launch is its own torchrun job; rank 0 measures samples/s
(global samples) from the end of iteration 5 (warm-up) to the end of training. A round
launches every framework once, in an order rotated from round to round (interleaved), and
each framework's per-round ratio is its samples/s over the hand-written loop's in that
round. ``--diagnostics`` adds variants that price one part of distengine each (the
hand-written loop plus one blocking or one overlapped agreement per iteration, distengine
with the blocking agreement, distengine seeding every generator before every sample). The table gives the median samples/s and the median ratio over rounds, each with
its min-max spread, and the load average before and after (the machine is shared: figures
taken with a high load are not comparable).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GLOBAL_BATCH = 128
WARMUP = 5
LR, MOMENTUM = 0.01, 0.9
FRAMEWORKS = ("hand-written", "distengine", "ignite", "lightning", "accelerate")
# --diagnostics: variants that price one part of distengine each, in the same rounds
VARIANTS = (
    "hand-written+agreement",  # + agree_flags(0) after every step (a blocking collective)
    "hand-written+overlapped",  # + start_agreement after every step, read one step later
    "distengine-blocking",  # overlap_agreement = False
    "distengine-eager-seeding",  # SeededDataset(lazy=False): every generator, every sample
)
_REQUIRES = {"ignite": "ignite", "lightning": "lightning", "accelerate": "accelerate"}


# --- the job, shared by every framework ------------------------------------------------------
def _cnn():
    import torch

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


def _data(n: int):
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(
        torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    )


class _Clock:
    """Starts at the end of iteration ``WARMUP``; ``rate()`` in global samples/s.

    ``rate`` also checks that the framework ran the job: 2 ranks (``world``) and one
    iteration per global batch of every epoch.
    """

    def __init__(self, n: int, epochs: int, world: int) -> None:
        if world != 2:
            raise RuntimeError(f"the job runs on 2 ranks, this framework runs on {world}")
        self.expected = -(-n // GLOBAL_BATCH) * epochs
        self.iterations = 0
        self.t0: float | None = None

    def tick(self) -> None:
        self.iterations += 1
        if self.iterations == WARMUP:
            self.t0 = time.perf_counter()

    def rate(self) -> float:
        if self.iterations != self.expected:
            raise RuntimeError(f"{self.iterations} iterations run, {self.expected} expected")
        assert self.t0 is not None
        return (self.iterations - WARMUP) * GLOBAL_BATCH / (time.perf_counter() - self.t0)


# --- one function per framework, each run on every rank of a torchrun job ---------------------
def _hand_written(n: int, epochs: int, agreement: str | None = None) -> float:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    ds = _data(n)
    model = torch.nn.parallel.DistributedDataParallel(_cnn())
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    sampler = torch.utils.data.distributed.DistributedSampler(ds, shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=GLOBAL_BATCH // dist.get_world_size(), sampler=sampler
    )
    clock = _Clock(n, epochs, dist.get_world_size())
    _hand_written_loop(model, opt, sampler, loader, epochs, clock, agreement)
    rate = clock.rate()
    del model
    if agreement is not None:
        import distengine.distributed as idist

        idist.finalize()
    dist.destroy_process_group()
    return rate


def _hand_written_loop(model, opt, sampler, loader, epochs, clock, agreement) -> None:
    import torch

    if agreement is not None:  # diagnostics: what one agreement per iteration costs
        import distengine.distributed as idist
    pending = None
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if agreement == "blocking":
                idist.agree_flags(0)
            elif agreement == "overlapped":
                if pending is not None:
                    pending.wait()
                pending = idist.start_agreement(0)
            clock.tick()
    if pending is not None:
        pending.wait()


def _engine_job(  # noqa: N803
    idist, create_supervised_trainer, Events, Accuracy, Loss, n, epochs, set_epoch, variant=None
):
    import torch

    torch.set_num_threads(1)
    ds = _data(n)
    if variant == "distengine-eager-seeding":
        from distengine.data import SeededDataset

        ds = SeededDataset(ds, lazy=False)
    loader = idist.auto_dataloader(ds, batch_size=GLOBAL_BATCH, shuffle=True)
    model = idist.auto_model(_cnn())
    opt = idist.auto_optim(torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM))
    trainer = create_supervised_trainer(
        model,
        opt,
        torch.nn.functional.cross_entropy,
        output_transform=lambda x, y, y_pred, loss: {"y_pred": y_pred, "y": y, "loss": loss},
    )
    Accuracy(output_transform=lambda o: (o["y_pred"], o["y"])).attach(trainer, "accuracy")
    Loss(
        torch.nn.functional.cross_entropy, output_transform=lambda o: (o["y_pred"], o["y"])
    ).attach(trainer, "loss")
    if set_epoch:  # what an Ignite user adds (Ignite leaves set_epoch to the user)
        trainer.add_event_handler(
            Events.EPOCH_STARTED, lambda e: loader.sampler.set_epoch(e.state.epoch - 1)
        )
    if variant == "distengine-blocking":
        trainer.overlap_agreement = False
    clock = _Clock(n, epochs, idist.get_world_size())
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: clock.tick())
    trainer.run(loader, max_epochs=epochs)
    return clock.rate()


def _distengine(n: int, epochs: int, variant: str | None = None) -> float:
    import distengine.distributed as idist
    from distengine.engine import Events, create_supervised_trainer
    from distengine.metrics import Accuracy, Loss

    idist.initialize("gloo")
    try:
        return _engine_job(
            idist, create_supervised_trainer, Events, Accuracy, Loss, n, epochs, False, variant
        )
    finally:
        idist.finalize()


def _ignite(n: int, epochs: int) -> float:
    import ignite.distributed as idist
    from ignite.engine import Events, create_supervised_trainer
    from ignite.metrics import Accuracy, Loss

    idist.initialize("gloo")
    try:
        return _engine_job(
            idist, create_supervised_trainer, Events, Accuracy, Loss, n, epochs, True
        )
    finally:
        idist.finalize()


def _lightning(n: int, epochs: int) -> float:
    import lightning as L  # noqa: N812
    import torch

    world = int(os.environ["WORLD_SIZE"])
    clock = _Clock(n, epochs, world)

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _cnn()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def on_train_batch_end(self, outputs, batch, batch_idx):
            clock.tick()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM)

    trainer = L.Trainer(
        accelerator="cpu",
        devices=world,
        strategy="ddp",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    torch.set_num_threads(1)
    loader = torch.utils.data.DataLoader(_data(n), batch_size=GLOBAL_BATCH // world, shuffle=True)
    trainer.fit(Module(), loader)
    if trainer.world_size != world:
        raise RuntimeError(f"Lightning ran on {trainer.world_size} ranks, not {world}")
    rate = clock.rate()
    torch.distributed.destroy_process_group()
    return rate


def _accelerate(n: int, epochs: int) -> float:
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    torch.set_num_threads(1)
    world = accelerator.num_processes
    model = _cnn()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loader = torch.utils.data.DataLoader(_data(n), batch_size=GLOBAL_BATCH // world, shuffle=True)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    clock = _Clock(n, epochs, world)
    _accelerate_loop(accelerator, model, opt, loader, epochs, clock)
    rate = clock.rate()
    accelerator.end_training()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return rate


def _accelerate_loop(accelerator, model, opt, loader, epochs, clock) -> None:
    import torch

    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            accelerator.backward(loss)
            opt.step()
            clock.tick()


_JOBS = {
    "hand-written": _hand_written,
    "distengine": _distengine,
    "ignite": _ignite,
    "lightning": _lightning,
    "accelerate": _accelerate,
    "hand-written+agreement": lambda n, e: _hand_written(n, e, "blocking"),
    "hand-written+overlapped": lambda n, e: _hand_written(n, e, "overlapped"),
    "distengine-blocking": lambda n, e: _distengine(n, e, "distengine-blocking"),
    "distengine-eager-seeding": lambda n, e: _distengine(n, e, "distengine-eager-seeding"),
}


def _worker(name: str, n: int, epochs: int) -> None:
    rate = _JOBS[name](n, epochs)
    if int(os.environ.get("RANK", "0")) == 0:
        print("RESULT " + json.dumps({"framework": name, "samples_per_s": rate}), flush=True)


# --- the driver: interleaved torchrun launches -------------------------------------------------
def _available(name: str) -> bool:
    module = _REQUIRES.get(name)
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _launch(name: str, n: int, epochs: int, timeout: float, tree: Path = ROOT) -> float:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("DISTENGINE_BACKEND", "gloo")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "--samples",
        str(n),
        "--epochs",
        str(epochs),
    ]
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=tree,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        proc.communicate()
        raise RuntimeError(f"{name}: no result within {timeout:.0f} s") from None
    finally:
        _kill_tree(proc.pid)  # torchrun's workers live in sessions of their own
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return float(json.loads(line[len("RESULT ") :])["samples_per_s"])
    raise RuntimeError(f"{name} failed (exit status {proc.returncode}):\n{err[-3000:]}")


def _kill_tree(pid: int) -> None:
    """SIGKILLs ``pid`` and its descendants (read from /proc), if any are left."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    todo, found = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    for target in found:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--samples", type=int, default=8192, help="samples per epoch")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    p.add_argument("--quick", action="store_true", help="3 rounds of 2,048 samples")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per launch")
    p.add_argument(
        "--compare",
        metavar="DIR",
        action="append",
        default=[],
        help="also run distengine from the source tree DIR (a directory holding distengine/, "
        "e.g. an older commit's `git archive`), as the row distengine@DIR",
    )
    p.add_argument(
        "--diagnostics",
        action="store_true",
        help="also run variants that price one part each: " + ", ".join(VARIANTS),
    )
    p.add_argument("--worker", choices=FRAMEWORKS + VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args.worker, args.samples, args.epochs)
        return
    if args.quick:
        args.rounds, args.samples = 3, 2048
    wanted = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unknown = [f for f in wanted if f not in FRAMEWORKS]
    if unknown or "hand-written" not in wanted:
        p.error(f"--frameworks: a subset of {','.join(FRAMEWORKS)} including hand-written")
    if -(-args.samples // GLOBAL_BATCH) * args.epochs <= WARMUP:
        p.error(f"--samples/--epochs give at most {WARMUP} iterations: nothing to time")
    names = [f for f in wanted if _available(f)]
    missing = [f for f in wanted if f not in names]
    if args.diagnostics:
        names += list(VARIANTS)
    trees = {f: ROOT for f in names}
    for d in args.compare:
        tree = Path(d).resolve()
        if not (tree / "distengine" / "__init__.py").is_file():
            p.error(f"--compare {d}: no distengine/ package there")
        names.append(f"distengine@{d}")
        trees[names[-1]] = tree
    load_before = os.getloadavg()
    rates: dict[str, list[float]] = {f: [] for f in names}
    ratios: dict[str, list[float]] = {f: [] for f in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        got = {
            f: _launch(f.split("@")[0], args.samples, args.epochs, args.timeout, trees[f])
            for f in order
        }
        for f in names:
            rates[f].append(got[f])
            ratios[f].append(got[f] / got["hand-written"])
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{f} {got[f]:.0f} ({ratios[f][-1]:.3f})" for f in names),
            file=sys.stderr,
            flush=True,
        )
    load_after = os.getloadavg()
    import torch

    print(
        f"\nDDP, 2 gloo ranks under torchrun, small CNN, {args.samples} CIFAR-shaped samples x "
        f"{args.epochs} epochs, global batch {GLOBAL_BATCH}, 1 thread per rank; samples/s of "
        f"rank 0 after {WARMUP} warm-up iterations; {args.rounds} interleaved rounds, median "
        f"(min-max); torch {torch.__version__}"
    )
    print(
        "load average (1/5/15 min) before: "
        + "/".join(f"{v:.2f}" for v in load_before)
        + ", after: "
        + "/".join(f"{v:.2f}" for v in load_after)
    )
    print("| framework | samples/s | ratio to hand-written (per round) |")
    print("| --- | --- | --- |")
    for f in sorted(names, key=lambda f: -statistics.median(ratios[f])):
        print(f"| {f} | {_spread(rates[f], '.0f')} | {_spread(ratios[f], '.3f')} |")
    if missing:
        print("not installed (no row): " + ", ".join(missing))
    if "distengine" in names:
        ours = statistics.median(ratios["distengine"])
        verdict = [f"distengine / hand-written {ours:.3f} (target >= 0.97)"]
        if "ignite" in names:
            theirs = statistics.median(ratios["ignite"])
            verdict.append(f"ignite {theirs:.3f} (target: distengine >= ignite)")
        print("; ".join(verdict))


if __name__ == "__main__":
    main()
