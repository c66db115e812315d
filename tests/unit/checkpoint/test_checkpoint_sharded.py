"""Sharded checkpoints in one process: layout, integrity, crash safety, async, S3.

At world size 1 a model from ``auto_model(sharding="fsdp")`` stays whole but keeps the
sharded layout, and ``Checkpoint(..., sharded=True)`` writes any model that way: the same
code path as on many ranks (DCP plans, one file per rank, a manifest listing every file),
so the rules that do not depend on the number of ranks are tested here, in-process and
cheaply. Multi-rank behaviour (FSDP, resharding) is in tests/distributed/checkpoint/test_sharded_dist.py.
"""

from __future__ import annotations

import os
import threading
import warnings

import pytest
import torch
from proctree import child_context
from torch import nn

import distengine.distributed as idist
from distengine.checkpoint import (
    CheckpointIntegrityError,
    CheckpointSaveError,
    Storage,
    faults,
    list_checkpoints,
    read_payload,
)
from distengine.checkpoint.content import SHARDED_MARKER, check_weights_only
from distengine.checkpoint.manifest import manifest_name
from distengine.checkpoint.sharded import find_parts, shard_names
from distengine.checkpoint.writer import DirectoryWriter, SaveRequest, WriterSession
from distengine.distributed import sharded as dsh
from distengine.engine import Engine, Events
from distengine.handlers.checkpoint import Checkpoint
from distengine.handlers.disk_saver import DiskSaver


@pytest.fixture(autouse=True)
def _clean_faults(monkeypatch):
    monkeypatch.delenv(faults.FAULT_INJECT_ENV, raising=False)
    faults.reset_fault_counts()
    yield
    faults.set_fault_hook(None)
    faults.reset_fault_counts()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(4, 6), nn.Linear(6, 2)])
        self.register_buffer("steps", torch.zeros(1))

    def forward(self, x):
        self.steps += 1
        return self.blocks[1](torch.relu(self.blocks[0](x)))


def _objects(seed: int = 0, via_auto_model: bool = False):
    torch.manual_seed(seed)
    model = Net()
    if via_auto_model:
        model = idist.auto_model(model, sharding="fsdp")
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    data = torch.randn(3, 4)

    def step(engine, batch):
        opt.zero_grad()
        model(data).pow(2).mean().backward()
        opt.step()

    return model, opt, Engine(step)


def _equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _equal_optimizers(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa["param_groups"] == sb["param_groups"] and all(
        _equal_states(sa["state"][i], sb["state"][i]) for i in sa["state"]
    )


def _train(d: str, iterations: int = 3, n_saved: int | None = 2, resume: bool = False, **kwargs):
    model, opt, trainer = _objects(via_auto_model=kwargs.pop("via_auto_model", False))
    to_save = {"model": model, "optimizer": opt, "trainer": trainer}
    handler = Checkpoint(to_save, DiskSaver(d, require_empty=False), n_saved=n_saved, **kwargs)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, handler)
    if resume:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the killed save's leftovers
            Checkpoint.load_objects(to_save, Checkpoint.latest(d))
    trainer.run(list(range(iterations)), max_epochs=1)
    return model, opt, trainer, handler


def _load(url: str, **options):
    model, opt, trainer = _objects(seed=1)
    Checkpoint.load_objects({"model": model, "optimizer": opt, "trainer": trainer}, url, **options)
    return model, opt, trainer


def test_auto_model_fsdp_alone_keeps_the_model_and_the_sharded_layout(tmp_path):
    d = str(tmp_path)
    model, opt, trainer, _ = _train(d, via_auto_model=True)
    assert type(model) is Net and dsh.intends_sharding(model)
    assert [p.key for p in find_parts({"model": model, "optimizer": opt})] == [
        "model",
        "optimizer",
    ]
    files = sorted(os.listdir(d))
    assert files == sorted(
        f"checkpoint_{i}.pt{s}" for i in (2, 3) for s in ("", ".manifest.json", ".rank0.distcp")
    )
    latest = Checkpoint.latest(d)
    assert latest == os.path.join(d, "checkpoint_3.pt")
    m = list_checkpoints(Storage(d))[-1].manifest
    assert sorted(m.files) == ["checkpoint_3.pt", "checkpoint_3.pt.rank0.distcp"]
    payload = read_payload(latest)
    assert payload["model"] == {SHARDED_MARKER: "model"}
    assert payload["optimizer"] == {SHARDED_MARKER: "optimizer"}
    assert payload["trainer"]["iteration"] == 3  # the engine rides along in the payload
    check_weights_only(payload)  # plain data: the metadata too
    m2, o2, t2 = _load(latest)
    assert _equal_states(model.state_dict(), m2.state_dict())  # buffers included
    assert _equal_optimizers(opt, o2)
    assert t2.state.iteration == 3


def test_sharded_true_writes_a_plain_model_per_rank_and_loads_it_back(tmp_path):
    d = str(tmp_path)
    model, opt, _, _ = _train(d, sharded=True)
    assert not dsh.intends_sharding(model)
    m2, o2, t2 = _load(Checkpoint.latest(d))
    assert _equal_states(model.state_dict(), m2.state_dict()) and _equal_optimizers(opt, o2)
    # the same run without sharded=True is one payload, loadable into the same objects
    plain = str(tmp_path / "plain")
    model3, opt3, _, _ = _train(plain)
    assert sorted(os.listdir(plain)) == sorted(
        f"checkpoint_{i}.pt{s}" for i in (2, 3) for s in ("", ".manifest.json")
    )
    assert _equal_states(model.state_dict(), model3.state_dict())


def test_optimizer_of_a_sharded_model_needs_its_model_in_to_save(tmp_path):
    model, opt, trainer = _objects(via_auto_model=True)
    handler = Checkpoint({"optimizer": opt, "trainer": trainer}, str(tmp_path))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, handler)
    with pytest.raises(ValueError, match=r"optimizer of a sharded model.*put that model in"):
        trainer.run([0], max_epochs=1)
    assert os.listdir(tmp_path) == []
    # and to load it, its model must be in to_load
    d = str(tmp_path / "ok")
    _train(d, via_auto_model=True)
    _, opt2, _ = _objects(via_auto_model=True)
    with pytest.raises(ValueError, match="put that model in to_load"):
        Checkpoint.load_objects({"optimizer": opt2}, Checkpoint.latest(d), strict=False)


def test_a_save_handler_that_is_not_a_directory_cannot_take_sharded_state(tmp_path):
    model, opt, trainer = _objects(via_auto_model=True)
    calls = []
    handler = Checkpoint({"model": model, "trainer": trainer}, lambda c, f: calls.append(f))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, handler)
    with pytest.raises(
        TypeError, match=r"\['model'\] hold sharded state.*give Checkpoint a directory"
    ):
        trainer.run([0], max_epochs=1)
    assert calls == []


def test_a_loaded_mapping_cannot_supply_sharded_state(tmp_path):
    d = str(tmp_path)
    _train(d, via_auto_model=True)
    payload = read_payload(Checkpoint.latest(d))
    model, opt, trainer = _objects(via_auto_model=True)
    with pytest.raises(ValueError, match="pass the checkpoint's path or URL"):
        Checkpoint.load_objects({"model": model, "optimizer": opt}, payload)


def test_strict_loading_refuses_entries_the_model_lacks(tmp_path):
    d = str(tmp_path)
    _train(d, via_auto_model=True)
    latest = Checkpoint.latest(d)
    torch.manual_seed(0)
    smaller = idist.auto_model(
        nn.ModuleDict({"blocks": nn.ModuleList([nn.Linear(4, 6)])}), sharding="fsdp"
    )
    with pytest.raises(ValueError, match=r"blocks\.1\..*strict=True"):
        Checkpoint.load_objects({"model": smaller}, latest)
    Checkpoint.load_objects({"model": smaller}, latest, strict=False)
    reference, _, _ = _load(latest)
    assert torch.equal(smaller["blocks"][0].weight, reference.blocks[0].weight)


def test_metadata_in_the_payload_is_plain_data_and_round_trips(tmp_path):
    from distengine.distributed.dcp_storage import decode_metadata, encode_metadata

    d = str(tmp_path)
    _train(d, via_auto_model=True)
    md = read_payload(Checkpoint.latest(d))["__distengine__"]["sharded"]["metadata"]
    check_weights_only(md)
    assert encode_metadata(decode_metadata(md)) == md
    assert set(md["files"]) == {"checkpoint_3.pt.rank0.distcp"}
    with pytest.raises(ValueError, match="damaged sharded-state metadata"):
        decode_metadata({**md, "entries": {"x": {"kind": "tensor"}}})


def test_companion_names_are_chosen_free_together_with_the_payload(tmp_path):
    st = Storage(str(tmp_path))
    st.write_bytes("c_1.pt.rank1.distcp", b"someone else's file")
    w = DirectoryWriter(st)
    pending = w.begin(
        WriterSession.anonymous(), SaveRequest("c_1.pt", None), lambda n: shard_names(n, 2)
    )
    assert pending.payload_name != "c_1.pt" and pending.payload_name.startswith("c_1.")
    assert set(pending.files) >= set(shard_names(pending.payload_name, 2))
    w.abandon(pending, RuntimeError("test"))
    assert sorted(os.listdir(tmp_path)) == ["c_1.pt.rank1.distcp"]  # not ours: kept


def _damage(d: str, kind: str) -> str:
    """Damages the newest checkpoint of ``d``; returns the file that was damaged."""
    st = Storage(d)
    newest = list_checkpoints(st)[-1].manifest
    shard = next(n for n in newest.files if n.endswith(".distcp"))
    if kind == "corrupt":
        data = bytearray(st.read(shard))
        data[len(data) // 2] ^= 0xFF
        st.write_bytes(shard, bytes(data))
        return shard
    if kind == "delete":
        st.remove(shard)
        return shard
    name = manifest_name(newest.payload)
    st.write_bytes(name, st.read(name)[:40])
    return name


@pytest.mark.parametrize("kind", ["corrupt", "delete", "truncate-manifest"])
def test_a_damaged_checkpoint_is_skipped_by_latest_and_refused_by_load(tmp_path, kind):
    d = str(tmp_path)
    model, opt, _, _ = _train(d, iterations=3, via_auto_model=True)
    damaged = _damage(d, kind)
    with pytest.warns(RuntimeWarning, match="Skipping an invalid checkpoint"):
        latest = Checkpoint.latest(d)
    assert latest == os.path.join(d, "checkpoint_2.pt")
    _, _, trainer = _load(latest)
    assert trainer.state.iteration == 2
    with pytest.raises(CheckpointIntegrityError, match=damaged.replace(".", r"\.")):
        _load(os.path.join(d, "checkpoint_3.pt"))


def test_retention_and_a_reused_name_remove_every_file_of_a_checkpoint(tmp_path):
    d = str(tmp_path)
    _train(d, iterations=3, n_saved=1, via_auto_model=True)
    assert sorted(os.listdir(d)) == [
        "checkpoint_3.pt",
        "checkpoint_3.pt.manifest.json",
        "checkpoint_3.pt.rank0.distcp",
    ]
    fixed = str(tmp_path / "fixed")
    model, opt, _, _ = _train(
        fixed, iterations=3, n_saved=1, via_auto_model=True, filename_pattern="{name}_last.{ext}"
    )
    files = sorted(os.listdir(fixed))
    shards = [f for f in files if f.endswith(".distcp")]
    assert len(files) == 3 and "checkpoint_last.pt" in files and len(shards) == 1
    m2, o2, t2 = _load(Checkpoint.latest(fixed))
    assert t2.state.iteration == 3 and _equal_states(model.state_dict(), m2.state_dict())
    assert _equal_optimizers(opt, o2)


def test_a_failed_shard_write_removes_what_it_wrote_and_keeps_the_previous(tmp_path, monkeypatch):
    d = str(tmp_path)
    model, opt, trainer = _objects(via_auto_model=True)
    handler = Checkpoint({"model": model, "optimizer": opt, "trainer": trainer}, d, n_saved=2)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, handler)
    # the second save's shard file fails half-way (the first write of each save is the shard)
    monkeypatch.setenv(faults.FAULT_INJECT_ENV, "payload_partial:3:raise")
    with pytest.raises(CheckpointSaveError, match="while writing sharded state.*fault injected"):
        trainer.run(list(range(3)), max_epochs=1)
    assert sorted(os.listdir(d)) == [
        "checkpoint_1.pt",
        "checkpoint_1.pt.manifest.json",
        "checkpoint_1.pt.rank0.distcp",
    ]
    assert Checkpoint.latest(d) == os.path.join(d, "checkpoint_1.pt")


def test_async_save_commits_and_prunes_only_once_the_shards_are_durable(tmp_path):
    d = str(tmp_path)
    model, opt, trainer = _objects(via_auto_model=True)
    handler = Checkpoint(
        {"model": model, "optimizer": opt, "trainer": trainer}, d, n_saved=1, async_save=True
    )
    release, blocked = threading.Event(), threading.Event()
    writes = []

    def hold_second_shard(phase: str) -> None:
        if phase == "before_commit":
            writes.append(phase)
            if len(writes) == 3:  # the second save's shard file, written but not committed
                blocked.set()
                assert release.wait(30)

    faults.set_fault_hook(hold_second_shard)
    trainer.run([0], max_epochs=1)
    handler(trainer)  # first save, in the background
    handler.wait()
    assert Checkpoint.latest(d) == os.path.join(d, "checkpoint_1.pt")
    trainer.state.iteration = 2
    with torch.no_grad():
        model.blocks[0].weight += 1.0  # state at the call of the second save
    saved_weight = model.blocks[0].weight.clone()
    handler(trainer)  # returns once the state is copied
    with torch.no_grad():
        model.blocks[0].weight += 1.0  # training goes on: must not reach the file
    assert blocked.wait(30)
    # the write is not durable yet: no manifest, the previous checkpoint is latest and kept
    assert Checkpoint.latest(d) == os.path.join(d, "checkpoint_1.pt")
    assert "checkpoint_1.pt.rank0.distcp" in os.listdir(d)
    assert not any(n.startswith("checkpoint_2.pt.manifest") for n in os.listdir(d))
    release.set()
    handler.wait()
    assert Checkpoint.latest(d) == os.path.join(d, "checkpoint_2.pt")
    assert sorted(os.listdir(d)) == [
        "checkpoint_2.pt",
        "checkpoint_2.pt.manifest.json",
        "checkpoint_2.pt.rank0.distcp",
    ]
    m2, _, _ = _load(Checkpoint.latest(d))
    assert torch.equal(m2.blocks[0].weight, saved_weight)


def test_a_failed_background_write_is_reported_and_the_previous_stays(tmp_path, monkeypatch):
    d = str(tmp_path)
    model, opt, trainer = _objects(via_auto_model=True)
    handler = Checkpoint(
        {"model": model, "optimizer": opt, "trainer": trainer}, d, n_saved=1, async_save=True
    )
    monkeypatch.setenv(faults.FAULT_INJECT_ENV, "payload_partial:3:raise")
    trainer.add_event_handler(Events.ITERATION_COMPLETED, handler)
    with pytest.raises(CheckpointSaveError, match="background save failed"):
        trainer.run(list(range(3)), max_epochs=1)
    assert Checkpoint.latest(d) == os.path.join(d, "checkpoint_1.pt")
    assert sorted(os.listdir(d)) == [
        "checkpoint_1.pt",
        "checkpoint_1.pt.manifest.json",
        "checkpoint_1.pt.rank0.distcp",
    ]


# The phases of the second save (a fixed name: its files go to a unique variant, promoted
# once committed) where sharded state changes what is on disk: a shard half-written, every
# shard durable but the payload half-written, the manifest half-written, committed with the
# older checkpoint still there, promoted with the unique variant still there (its shard
# files are shared by two manifests). The other phases are the writer's, tested for every
# kind of checkpoint in test_checkpoint_crash.py.
PHASES = [
    ("shard-partial", "payload_partial:3", 1),
    ("payload-partial", "payload_partial:4", 1),
    ("manifest-partial", "manifest_partial:2", 1),
    ("before-cleanup", "before_cleanup:2", 2),
    ("after-promote", "after_promote:1", 2),
]


def _crash_child(d: str, spec: str) -> None:
    os.environ[faults.FAULT_INJECT_ENV] = spec
    faults.reset_fault_counts()
    _train(d, iterations=3, n_saved=1, via_auto_model=True, filename_pattern="{name}_last.{ext}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("spec, saved_at", [p[1:] for p in PHASES], ids=[p[0] for p in PHASES])
def test_sigkill_at_any_phase_of_a_sharded_save_keeps_a_valid_checkpoint(tmp_path, spec, saved_at):
    d = str(tmp_path)
    proc = child_context().Process(target=_crash_child, args=(d, spec))
    proc.start()
    proc.join(timeout=60)
    if proc.is_alive():
        proc.kill()
        proc.join(10)
        raise AssertionError("the child did not finish within 60 s")
    assert proc.exitcode == -9, f"the fault did not fire (exit code {proc.exitcode})"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        latest = Checkpoint.latest(d)
    _, _, trainer = _load(latest)
    assert trainer.state.iteration == saved_at
    # resumed, the handler removes what the killed save left and keeps one checkpoint
    _train(
        d,
        iterations=3,
        n_saved=1,
        resume=True,
        via_auto_model=True,
        filename_pattern="{name}_last.{ext}",
    )
    files = sorted(os.listdir(d))
    assert len(files) == 3 and "checkpoint_last.pt" in files, files
    assert _load(Checkpoint.latest(d))[2].state.iteration == 3


@pytest.mark.parametrize("kind", ["corrupt", "delete", "truncate-manifest"])
def test_damaged_sharded_checkpoint_on_s3(s3_server, kind):
    url, opts = s3_server.url("sharded"), s3_server.storage_options
    model, opt, trainer = _objects(via_auto_model=True)
    handler = Checkpoint(
        {"model": model, "optimizer": opt, "trainer": trainer},
        DiskSaver(url, require_empty=False, **opts),
        n_saved=2,
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, handler)
    trainer.run(list(range(2)), max_epochs=1)
    assert _load(Checkpoint.latest(url, **opts), **opts)[2].state.iteration == 2
    st = Storage(url, **opts)
    newest = list_checkpoints(st)[-1].manifest
    shard = next(n for n in newest.files if n.endswith(".distcp"))
    if kind == "corrupt":
        data = bytearray(st.read(shard))
        data[-100] ^= 0x01
        st.write_bytes(shard, bytes(data))
        damaged = shard
    elif kind == "delete":
        st.remove(shard)
        damaged = shard
    else:
        damaged = manifest_name(newest.payload)
        st.write_bytes(damaged, st.read(damaged)[:-7])
    with pytest.warns(RuntimeWarning, match="Skipping an invalid checkpoint"):
        latest = Checkpoint.latest(url, **opts)
    assert latest == f"{url}/checkpoint_1.pt"
    assert _load(latest, **opts)[2].state.iteration == 1
    with pytest.raises(CheckpointIntegrityError, match=damaged.replace(".", r"\.")):
        _load(f"{url}/checkpoint_2.pt", **opts)
