"""Checkpoints on object storage, against a real S3 API server on loopback (moto_server)."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from distengine.checkpoint import (
    CheckpointError,
    CheckpointIntegrityError,
    CheckpointSaveError,
    Storage,
    faults,
)
from distengine.engine import Engine, Events
from distengine.handlers.checkpoint import Checkpoint
from distengine.handlers.disk_saver import DiskSaver

# The s3_server / s3_server_private fixtures come from tests/s3_server.py (see conftest).


@pytest.fixture(autouse=True)
def _clean_faults(monkeypatch):
    monkeypatch.delenv(faults.FAULT_INJECT_ENV, raising=False)
    faults.reset_fault_counts()
    yield
    faults.set_fault_hook(None)
    faults.reset_fault_counts()


def _trainer(url: str, options: dict, n_saved: int | None = 2):
    model = nn.Linear(3, 3)
    engine = Engine(lambda e, b: None)
    handler = Checkpoint(
        {"model": model, "trainer": engine},
        DiskSaver(url, require_empty=False, **options),
        n_saved=n_saved,
    )
    engine.add_event_handler(Events.ITERATION_COMPLETED, handler)
    return engine, model, handler


def _names(url: str, options: dict) -> list[str]:
    return sorted(Storage(url, **options).list_files())


def test_save_retention_latest_and_load(s3_server):
    url, opts = s3_server.url("run"), s3_server.storage_options
    engine, model, handler = _trainer(url, opts)
    engine.run(list(range(4)), max_epochs=1)
    assert _names(url, opts) == [
        "checkpoint_3.manifest.json",
        "checkpoint_3.pt",
        "checkpoint_4.manifest.json",
        "checkpoint_4.pt",
    ]
    latest = Checkpoint.latest(url, **opts)
    assert latest == f"{url}/checkpoint_4.pt" == handler.last_checkpoint
    engine2, model2 = Engine(lambda e, b: None), nn.Linear(3, 3)
    Checkpoint.load_objects({"model": model2, "trainer": engine2}, latest, **opts)
    assert engine2.state.iteration == 4 and torch.equal(model2.weight, model.weight)
    # a restarted job rebuilds retention from the manifests in the bucket
    engine3, _, _ = _trainer(url, opts)
    Checkpoint.load_objects({"trainer": engine3}, latest, strict=False, **opts)
    engine3.run(list(range(4)), max_epochs=2)
    assert [n for n in _names(url, opts) if n.endswith(".pt")] == [
        "checkpoint_7.pt",
        "checkpoint_8.pt",
    ]


def test_corrupt_newest_object_falls_back(s3_server):
    url, opts = s3_server.url("corrupt"), s3_server.storage_options
    engine, _, _ = _trainer(url, opts, n_saved=None)
    engine.run(list(range(2)), max_epochs=1)
    st = Storage(url, **opts)
    data = bytearray(st.read("checkpoint_2.pt"))
    data[len(data) // 2] ^= 0x01
    st.fs.pipe_file(st.path("checkpoint_2.pt"), bytes(data))
    with pytest.warns(RuntimeWarning, match="checkpoint_2.pt: SHA-256 mismatch"):
        assert Checkpoint.latest(url, **opts) == f"{url}/checkpoint_1.pt"
    with pytest.raises(CheckpointIntegrityError, match="checkpoint_2.pt: SHA-256 mismatch"):
        Checkpoint.load_objects(
            {"model": nn.Linear(3, 3)}, f"{url}/checkpoint_2.pt", strict=False, **opts
        )


@pytest.mark.parametrize("phase", ["payload_partial", "manifest_partial"])
def test_failed_upload_publishes_nothing(s3_server, monkeypatch, phase):
    url, opts = s3_server.url("partial"), s3_server.storage_options
    engine, _, _ = _trainer(url, opts, n_saved=None)
    monkeypatch.setenv(faults.FAULT_INJECT_ENV, f"{phase}:2:raise")
    with pytest.raises(CheckpointSaveError, match=phase):
        engine.run(list(range(3)), max_epochs=1)
    expected = ["checkpoint_1.manifest.json", "checkpoint_1.pt"]
    if phase == "manifest_partial":
        expected.append(
            "checkpoint_2.pt"
        )  # an orphan payload: not a checkpoint without its manifest
    assert _names(url, opts) == expected
    assert Checkpoint.latest(url, **opts) == f"{url}/checkpoint_1.pt"


@pytest.mark.timeout(90)
def test_server_stopped_during_a_save(s3_server_private):
    server = s3_server_private
    proxy = server.proxy()
    url = server.url("outage")
    try:
        engine, _, _ = _trainer(url, proxy.storage_options, n_saved=1)

        def cut_during_second_upload(phase: str) -> None:
            if phase == "payload_partial" and engine.state.iteration == 2:
                proxy.stop()

        faults.set_fault_hook(cut_during_second_upload)
        start = time.monotonic()
        with pytest.raises(
            CheckpointSaveError, match="checkpoint_2.pt.*(Connect|connect|Connection)"
        ):
            engine.run(list(range(3)), max_epochs=1)
        assert time.monotonic() - start < 30
    finally:
        proxy.stop()
    direct = server.storage_options  # the server itself is still up and holds the objects
    assert _names(url, direct) == ["checkpoint_1.manifest.json", "checkpoint_1.pt"]
    latest = Checkpoint.latest(url, **direct)
    assert latest == f"{url}/checkpoint_1.pt"
    Checkpoint.load_objects({"model": nn.Linear(3, 3)}, latest, strict=False, **direct)
    server.stop()  # now the server itself goes away: a clear error, not a hang
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="listing checkpoints.*failed"):
        Checkpoint.latest(url, **direct)
    assert time.monotonic() - start < 30
