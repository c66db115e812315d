"""Sharded models and sharded checkpoints on real gloo ranks (FSDP2 on a CPU mesh).

- saved at 2 ranks (local disk and S3), loaded at 2, at 1 (this process) and at 3: model
  and optimizer state bitwise equal to the saved ones (compared as gathered full state
  dicts); a damaged shard makes ``latest`` fall back and ``load_objects`` refuse on every
  rank; a load on one rank alone raises in bounded time;
- an async sharded save whose non-writing rank is killed while writing its shards leaves
  the previous checkpoint as ``latest``, whole;
- ``create_supervised_trainer``/``evaluator``, metrics, gradient accumulation and AMP on
  an FSDP model at 3 ranks, with unequal shares and a padding row, give the single-process
  result (to float tolerance); DDP stays the default.

Each job returns what it saw; the assertions run in the test process.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch.multiprocessing as tmp
from torch import nn

import distengine.distributed as idist
from distengine.checkpoint import (
    CheckpointCollectiveError,
    CheckpointIntegrityError,
    Storage,
    faults,
    list_checkpoints,
)
from distengine.engine import Engine, Events, create_supervised_evaluator, create_supervised_trainer
from distengine.handlers import Checkpoint, DiskSaver
from distengine.metrics import Accuracy, Loss

pytestmark = pytest.mark.timeout(180)


class Net(nn.Module):
    """Two blocks (sharded as units of their own), shapes that do not divide by 2 or 3."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(5, 7), nn.Linear(7, 3)])
        self.drop = nn.Dropout(dropout)
        self.register_buffer("seen", torch.zeros(1))

    def forward(self, x):
        self.seen += x.shape[0]
        return self.blocks[1](self.drop(torch.relu(self.blocks[0](x))))


def _build(seed: int):
    torch.manual_seed(seed)
    model = idist.auto_model(Net(), sharding="fsdp")
    return model, torch.optim.AdamW(model.parameters(), lr=0.05)


def _full(model, opt) -> dict:
    """The gathered full state of the model and the optimizer (by parameter name)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    if idist.get_world_size() == 1:
        options = None
    return {
        "model": get_model_state_dict(model, options=options),
        "optimizer": get_optimizer_state_dict(model, opt, options=options),
    }


def _same(a: dict, b: dict) -> bool:
    ma, mb = a["model"], b["model"]
    if ma.keys() != mb.keys() or not all(torch.equal(ma[k], mb[k]) for k in ma):
        return False
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    return (
        sa.keys() == sb.keys()
        and all(
            torch.equal(torch.as_tensor(sa[p][k]), torch.as_tensor(sb[p][k]))
            for p in sa
            for k in sa[p]
        )
        and a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    )


def _trainer(model, opt):
    g = torch.Generator().manual_seed(idist.get_rank())

    def step(engine, batch):
        opt.zero_grad()
        model(torch.randn(4, 5, generator=g)).pow(2).mean().backward()
        opt.step()

    return Engine(step)


def _save_job(local_rank: int, d: str, s3: tuple[str, dict], out: str) -> dict:
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    model, opt = _build(0)
    assert isinstance(model, FSDPModule) and isinstance(model.blocks[0].weight, DTensor)
    trainer = _trainer(model, opt)
    to_save = {"model": model, "optimizer": opt, "trainer": trainer}
    url, options = s3

    @trainer.on(Events.ITERATION_COMPLETED)
    def evaluate(_):  # a forward without backward leaves FSDP's root parameters gathered
        with torch.no_grad():
            model(torch.ones(2, 5))

    for target in (d, DiskSaver(url, require_empty=False, **options)):
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED, Checkpoint(to_save, target, n_saved=2)
        )
    trainer.run(list(range(3)), max_epochs=1)
    full = _full(model, opt)
    if idist.get_rank() == 0:
        torch.save(full, os.path.join(out, "saved.pt"))
    # the same world size: fresh objects, loaded, equal bitwise
    model2, opt2 = _build(1)
    trainer2 = _trainer(model2, opt2)
    Checkpoint.load_objects(
        {"model": model2, "optimizer": opt2, "trainer": trainer2}, Checkpoint.latest(d)
    )
    return {
        "same": _same(_full(model2, opt2), full),
        "iteration": trainer2.state.iteration,
        "local": [float(p.detach().to_local().sum()) for p in model.parameters()],
    }


def _damage(url: str, options: dict, kind: str) -> str:
    st = Storage(url, **options)
    newest = list_checkpoints(st)[-1].manifest
    shard = sorted(n for n in newest.files if n.endswith(".distcp"))[-1]
    if kind == "corrupt":
        data = bytearray(st.read(shard))
        data[len(data) // 3] ^= 0x10
        st.write_bytes(shard, bytes(data))
    else:
        st.remove(shard)
    return shard


def _reshard_job(local_rank: int, d: str, s3: tuple[str, dict], out: str) -> dict:
    saved = torch.load(os.path.join(out, "saved.pt"), weights_only=True)
    url, options = s3
    record: dict = {}
    for name, where, opts in (("local", d, {}), ("s3", url, options)):
        model, opt = _build(7)
        trainer = _trainer(model, opt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # per-rank state is not restored at world size 3
            Checkpoint.load_objects(
                {"model": model, "optimizer": opt, "trainer": trainer},
                Checkpoint.latest(where, **opts),
                **opts,
            )
        record[name] = {
            "same": _same(_full(model, opt), saved),
            "iteration": trainer.state.iteration,
        }
    # damage the newest checkpoint: a shard corrupted on disk, one deleted on S3
    idist.barrier()
    if idist.get_rank() == 0:
        record["damaged"] = [_damage(d, {}, "corrupt"), _damage(url, options, "delete")]
    idist.barrier()
    lone_target = None
    for name, where, opts in (("local", d, {}), ("s3", url, options)):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            latest = Checkpoint.latest(where, **opts)
        record[f"{name}_latest"] = str(latest)
        lone_target = lone_target or latest
        record[f"{name}_warned"] = any(
            "Skipping an invalid checkpoint" in str(w.message) for w in seen
        )
        model, opt = _build(8)
        damaged = latest.replace("checkpoint_2.pt", "checkpoint_3.pt")
        try:
            Checkpoint.load_objects(
                {"model": model, "optimizer": opt}, damaged, strict=False, **opts
            )
            record[f"{name}_refused"] = None
        except CheckpointIntegrityError as e:
            record[f"{name}_refused"] = str(e)
    # a load on one rank alone raises instead of hanging
    os.environ["DISTENGINE_CHECKPOINT_TIMEOUT"] = "2"
    if idist.get_rank() == 0:
        model, opt = _build(9)
        try:
            Checkpoint.load_objects({"model": model, "optimizer": opt}, lone_target, strict=False)
        except CheckpointCollectiveError as e:
            record["lone"] = str(e)
    return record


def test_saved_at_2_loads_bitwise_at_2_1_and_3_and_damage_is_refused(tmp_path, s3_server):
    d, out = str(tmp_path / "ckpt"), str(tmp_path)
    s3 = (s3_server.url("sharded-dist"), s3_server.storage_options)
    results = idist.spawn(_save_job, 2, backend="gloo", args=(d, s3, out))
    assert all(r["same"] and r["iteration"] == 3 for r in results), results
    assert results[0]["local"] != results[1]["local"]  # each rank holds its own shards
    files = sorted(os.listdir(d))
    assert files == sorted(
        f"checkpoint_{i}.pt{s}"
        for i in (2, 3)
        for s in ("", ".manifest.json", ".rank0.distcp", ".rank1.distcp")
    )
    saved = torch.load(os.path.join(out, "saved.pt"), weights_only=True)

    # world size 1, in this process: the whole model, loaded from both ranks' files
    torch.manual_seed(3)
    model = idist.auto_model(Net(), sharding="fsdp")
    opt = torch.optim.AdamW(model.parameters(), lr=0.5)
    with pytest.warns(RuntimeWarning, match="world size 2, loading at world size 1"):
        Checkpoint.load_objects(
            {"model": model, "optimizer": opt, "trainer": _trainer(model, opt)},
            Checkpoint.latest(d),
        )
    assert _same(_full(model, opt), saved)

    record = idist.spawn(_reshard_job, 3, backend="gloo", args=(d, s3, out))
    for r in record:
        assert r["local"] == {"same": True, "iteration": 3}, r
        assert r["s3"] == {"same": True, "iteration": 3}, r
    corrupt, deleted = record[0]["damaged"]
    for r in record:
        assert r["local_latest"].endswith("/checkpoint_2.pt") and r["s3_latest"].endswith(
            "/checkpoint_2.pt"
        )
        assert r["local_refused"] is not None and corrupt in r["local_refused"], r
        assert "xxh3_128 mismatch in bytes" in r["local_refused"], r
        assert r["s3_refused"] is not None and deleted in r["s3_refused"], r
    assert record[0]["local_warned"] and record[0]["s3_warned"]  # rank 0 lists and warns
    assert "call 'load' on every rank" in record[0]["lone"]


def _async_crash_job(local_rank: int, d: str) -> None:
    if idist.get_rank() == 1:  # its second shard file: killed half-way, in the background
        os.environ[faults.FAULT_INJECT_ENV] = "payload_partial:2:kill"
        seen = []

        def mark(phase: str) -> None:
            seen.append(phase)
            if seen.count("payload_partial") == 2:
                open(os.path.join(d, "..", "killed"), "w").close()

        faults.set_fault_hook(mark)
    model, opt = _build(0)
    trainer = _trainer(model, opt)
    handler = Checkpoint(
        {"model": model, "optimizer": opt, "trainer": trainer}, d, n_saved=1, async_save=True
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, handler)
    trainer.run(list(range(3)), max_epochs=1)


def test_a_rank_killed_during_an_async_sharded_write_leaves_the_previous_checkpoint(tmp_path):
    d = str(tmp_path / "ckpt")
    # rank 1 dies (SIGKILL); rank 0 fails on the lost peer: spawn reports whichever first
    with pytest.raises((tmp.ProcessExitedException, tmp.ProcessRaisedException)):
        idist.spawn(_async_crash_job, 2, backend="gloo", args=(d,))
    assert (tmp_path / "killed").exists()
    files = os.listdir(d)
    assert "checkpoint_2.pt.manifest.json" not in files  # never committed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        latest = Checkpoint.latest(d)
    assert latest == os.path.join(d, "checkpoint_1.pt")
    for f in ("checkpoint_1.pt", "checkpoint_1.pt.rank0.distcp", "checkpoint_1.pt.rank1.distcp"):
        assert f in files  # retention waited for a durable successor
    torch.manual_seed(3)
    model = idist.auto_model(Net(), sharding="fsdp")
    opt = torch.optim.AdamW(model.parameters(), lr=0.5)
    trainer = _trainer(model, opt)
    with pytest.warns(RuntimeWarning, match="per-rank state"):
        Checkpoint.load_objects({"model": model, "optimizer": opt, "trainer": trainer}, latest)
    assert trainer.state.iteration == 1


def _async_copy_failure_job(local_rank: int, d: str) -> dict:
    from distengine.distributed import sharded as dsh

    model, opt = _build(0)
    trainer = _trainer(model, opt)
    handler = Checkpoint(
        {"model": model, "optimizer": opt, "trainer": trainer}, d, n_saved=2, async_save=True
    )
    seen = {}
    real_stage = dsh.stage

    def failing_stage(state, reuse=None):
        raise MemoryError("no room for the copy")

    for iteration in (1, 2, 3):
        trainer.state.iteration = iteration
        if iteration == 2 and idist.get_rank() == 1:
            dsh.stage = failing_stage  # this rank cannot copy its shards, once
        try:
            handler(trainer)
            handler.wait()
            seen[iteration] = "saved"
        except Exception as e:
            seen[iteration] = f"{type(e).__name__}: {e}"
        finally:
            dsh.stage = real_stage
    seen["latest"] = os.path.basename(Checkpoint.latest(d))
    return seen


def test_a_rank_that_cannot_copy_its_shards_fails_the_async_save_on_every_rank(tmp_path):
    d = str(tmp_path / "ckpt")
    results = idist.spawn(_async_copy_failure_job, 2, backend="gloo", args=(d,))
    for r in results:  # raised on both ranks, before anything was written; the next save works
        assert r[1] == "saved" and r[3] == "saved", r
        assert r[2].startswith("CheckpointSaveError") and "rank 1: MemoryError" in r[2], r
        assert r["latest"] == "checkpoint_3.pt", r
    files = sorted(os.listdir(d))
    assert not any(f.startswith("checkpoint_2.") for f in files), files
    assert "checkpoint_1.pt.manifest.json" in files and "checkpoint_3.pt.manifest.json" in files


CONFIGS = {"fp32": (None, 1), "accumulate": (None, 2), "amp": ("amp", 1)}


def _supervised(sharding: str, amp_mode, accumulate: int) -> dict:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 3))
    model = idist.auto_model(net, sharding=sharding)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(10, 6, generator=g), torch.randint(0, 3, (10,), generator=g)
    data = torch.utils.data.TensorDataset(x, y)
    # global batch 4 over 3 ranks: shares 2/1/1; the last batch (2) leaves ranks 1, 2 padding
    loader = idist.auto_dataloader(data, batch_size=4, shuffle=True)
    loss_fn = nn.CrossEntropyLoss()
    trainer = create_supervised_trainer(
        model, opt, loss_fn, amp_mode=amp_mode, gradient_accumulation_steps=accumulate
    )
    padded = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: padded.append(e.state.batch_padding)
    )
    evaluator = create_supervised_evaluator(
        model, metrics={"acc": Accuracy(), "loss": Loss(loss_fn)}, amp_mode=amp_mode
    )
    trainer.run(loader, max_epochs=2, seed=11)
    evaluator.run(idist.auto_dataloader(data, batch_size=4, shuffle=False))
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = (
        get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        if idist.get_world_size() > 1
        else dict(model.state_dict())
    )
    return {
        "weights": {k: v.clone() for k, v in full.items()},
        "metrics": dict(evaluator.state.metrics),
        "padding_rows": sum(padded),
    }


def _supervised_job(local_rank: int) -> dict:
    checks = {
        "ddp_default": isinstance(
            idist.auto_model(nn.Linear(2, 2)), nn.parallel.DistributedDataParallel
        ),
        "none": type(idist.auto_model(nn.Linear(2, 2), sharding="none")) is nn.Linear,
    }
    for bad in ({"sharding": "zero3"}, {"shard_modules": (nn.Linear,)}):
        try:
            idist.auto_model(nn.Linear(2, 2), **bad)
            checks[str(bad)] = None
        except ValueError as e:
            checks[str(bad)] = str(e)
    return {
        "checks": checks,
        **{name: _supervised("fsdp", *cfg) for name, cfg in CONFIGS.items()},
    }


def test_supervised_trainer_evaluator_metrics_and_amp_on_fsdp_match_one_process():
    results = idist.spawn(_supervised_job, 3, backend="gloo")
    checks = results[0]["checks"]
    assert checks["ddp_default"] and checks["none"]
    assert "sharding must be one of" in checks[str({"sharding": "zero3"})]
    assert (
        "shard_modules applies to sharding='fsdp' only"
        in checks[str({"shard_modules": (nn.Linear,)})]
    )
    # the last global batch (2 samples) is rank 0's slice: ranks 1 and 2 pad, once per epoch
    assert [r["fp32"]["padding_rows"] for r in results] == [0, 2, 2]
    for name, cfg in CONFIGS.items():
        alone = _supervised("fsdp", *cfg)  # world size 1: the same global batches
        tol = {"rtol": 1e-5, "atol": 1e-6} if cfg[0] is None else {"rtol": 0.05, "atol": 0.02}
        for r in results:
            got = r[name]
            assert got["weights"].keys() == alone["weights"].keys()
            for k, v in alone["weights"].items():
                assert torch.allclose(got["weights"][k], v, **tol), (name, k)
            assert got["metrics"]["acc"] == alone["metrics"]["acc"], name
            assert got["metrics"]["loss"] == pytest.approx(
                alone["metrics"]["loss"], rel=1e-2 if cfg[0] else 1e-5
            )
