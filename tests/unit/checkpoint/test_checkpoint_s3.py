"""Checkpoints on object storage, against a real S3 API server on loopback (moto_server)."""

from __future__ import annotations

import os
import time

import pytest
import torch
from proctree import child_context
from torch import nn

from distengine.checkpoint import (
    CheckpointError,
    CheckpointIntegrityError,
    CheckpointSaveError,
    CheckpointTimeoutError,
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
        "checkpoint_3.pt",
        "checkpoint_3.pt.manifest.json",
        "checkpoint_4.pt",
        "checkpoint_4.pt.manifest.json",
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
    with pytest.raises(CheckpointSaveError, match=f"checkpoint_2.pt.*{phase}"):
        engine.run(list(range(3)), max_epochs=1)
    # the failed save removed what it had written (an orphan payload, its intent)
    assert _names(url, opts) == ["checkpoint_1.pt", "checkpoint_1.pt.manifest.json"]
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
        faults.set_fault_hook(None)
        proxy.stop()
    direct = server.storage_options  # the server itself is still up and holds the objects
    names = _names(url, direct)
    checkpoints = [n for n in names if not n.startswith(".ckpt-intent.")]
    assert checkpoints == ["checkpoint_1.pt", "checkpoint_1.pt.manifest.json"]
    latest = Checkpoint.latest(url, **direct)
    assert latest == f"{url}/checkpoint_1.pt"
    # the job restarts with the store reachable: it resumes and tidies what the outage left
    engine2, _, _ = _trainer(url, direct, n_saved=1)
    Checkpoint.load_objects({"trainer": engine2}, latest, strict=False, **direct)
    engine2.run(list(range(3)), max_epochs=1)
    assert _names(url, direct) == ["checkpoint_3.pt", "checkpoint_3.pt.manifest.json"]
    server.stop()  # now the server itself goes away: a clear error, not a hang
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="listing checkpoints.*failed"):
        Checkpoint.latest(url, **direct)
    assert time.monotonic() - start < 30


@pytest.mark.timeout(90)
def test_stalled_store_fails_the_save_in_bounded_time_naming_the_file(s3_server_private):
    server = s3_server_private
    url, opts = server.url("stalled"), server.storage_options
    model = nn.Linear(3, 3)
    engine = Engine(lambda e, b: None)
    saver = DiskSaver(url, require_empty=False, io_timeout=60, **opts)
    handler = Checkpoint({"model": model, "trainer": engine}, saver, n_saved=1)
    engine.add_event_handler(Events.ITERATION_COMPLETED, handler)

    @engine.on(Events.ITERATION_STARTED(once=2))
    def short_timeout(_):  # only for the save that meets the frozen store
        saver.storage.io_timeout = 3

    def freeze_during_second_upload(phase: str) -> None:
        if phase == "payload_partial" and engine.state.iteration == 2:
            server.pause()

    faults.set_fault_hook(freeze_during_second_upload)
    start = time.monotonic()
    try:
        with pytest.raises(
            CheckpointSaveError, match=r"checkpoint_2\.pt.*no progress for 3 s"
        ) as info:
            engine.run(list(range(3)), max_epochs=1)
        elapsed = time.monotonic() - start
    finally:
        faults.set_fault_hook(None)
        server.resume()
    assert isinstance(info.value.__cause__, CheckpointTimeoutError)
    assert 3 <= elapsed < 20
    latest = Checkpoint.latest(url, **opts)
    assert latest == f"{url}/checkpoint_1.pt"
    Checkpoint.load_objects({"model": nn.Linear(3, 3)}, latest, strict=False, **opts)


@pytest.mark.timeout(90)
def test_timeout_after_the_commit_is_a_warning_not_a_failed_save(s3_server_private):
    server = s3_server_private
    url, opts = server.url("late"), server.storage_options
    engine = Engine(lambda e, b: None)
    saver = DiskSaver(url, require_empty=False, io_timeout=60, **opts)
    handler = Checkpoint({"model": nn.Linear(3, 3), "trainer": engine}, saver, n_saved=1)
    saved = []
    handler.attach(engine, Events.ITERATION_COMPLETED)
    engine.add_event_handler(Checkpoint.SAVED_CHECKPOINT, lambda e: saved.append(e.state.iteration))

    @engine.on(Events.ITERATION_STARTED(once=2))
    def short_timeout(_):  # only for the save that meets the frozen store
        saver.storage.io_timeout = 2

    def freeze_after_second_commit(phase: str) -> None:
        if phase == "before_cleanup" and engine.state.iteration == 2:
            server.pause()

    faults.set_fault_hook(freeze_after_second_commit)
    try:
        with pytest.warns(
            RuntimeWarning, match=r"checkpoint_2\.pt is saved, but tidying up.*no progress"
        ):
            engine.run(list(range(2)), max_epochs=1)
    finally:
        faults.set_fault_hook(None)
        server.resume()
        saver.storage.io_timeout = 60
    assert saved == [1, 2]  # the save that timed out in its clean-up counts as done
    assert Checkpoint.latest(url, **opts) == f"{url}/checkpoint_2.pt"
    engine.run(list(range(2)), max_epochs=2)  # the run goes on; its next save tidies up
    assert _names(url, opts) == ["checkpoint_4.pt", "checkpoint_4.pt.manifest.json"]


def _big_trainer(url: str, options: dict):
    model = nn.Linear(1024, 3072, bias=False)  # 12 MiB: a multipart upload in 5 MiB parts
    engine = Engine(lambda e, b: None)
    handler = Checkpoint(
        {"model": model, "trainer": engine}, DiskSaver(url, require_empty=False, **options)
    )
    engine.add_event_handler(Events.ITERATION_COMPLETED, handler)
    return engine


def _killed_mid_upload(url: str, options: dict) -> None:
    os.environ[faults.FAULT_INJECT_ENV] = "before_commit:2"  # parts uploaded, not completed
    faults.reset_fault_counts()
    _big_trainer(url, options).run(list(range(3)), max_epochs=1)


def _uploads(url: str, options: dict) -> list[str]:
    st = Storage(url, **options)
    bucket, _, prefix = st.root.partition("/")
    listed = st.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
    return [u["Key"].rsplit("/", 1)[-1] for u in listed.get("Uploads", []) or []]


@pytest.mark.timeout(120)
def test_unfinished_multipart_upload_of_a_killed_save_is_aborted_by_the_next(s3_server):
    url = s3_server.url("multipart")
    opts = {**s3_server.storage_options, "default_block_size": 5 * 2**20}
    proc = child_context().Process(target=_killed_mid_upload, args=(url, opts))
    proc.start()
    proc.join(timeout=60)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout=10)
    assert proc.exitcode == -9, f"the fault did not fire (exit code {proc.exitcode})"
    assert _uploads(url, opts) == ["checkpoint_2.pt"]  # billed, invisible in listings
    assert [n for n in _names(url, opts) if not n.startswith(".")] == [
        "checkpoint_1.pt",
        "checkpoint_1.pt.manifest.json",
    ]
    engine = _big_trainer(url, opts)
    latest = Checkpoint.latest(url, **opts)
    Checkpoint.load_objects({"trainer": engine}, latest, strict=False, **opts)
    engine.run(list(range(3)), max_epochs=1)
    assert _uploads(url, opts) == []
    assert _names(url, opts) == ["checkpoint_3.pt", "checkpoint_3.pt.manifest.json"]
