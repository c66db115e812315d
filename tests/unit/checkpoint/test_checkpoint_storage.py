"""Checkpoint storage: atomic writes, manifests, digests, listing, integrity fallbacks."""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid

import pytest
import torch

from distengine.checkpoint import (
    CheckpointIntegrityError,
    FileEntry,
    Manifest,
    Storage,
    faults,
    find_latest,
    list_checkpoints,
    manifest_name,
    read_payload,
    write_checkpoint,
)
from distengine.checkpoint.hashing import HashingWriter, hash_stream
from distengine.handlers.disk_saver import DiskSaver


@pytest.fixture(params=["local", "memory"])
def dir_url(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "ckpt")
    return f"memory://ckpt-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def _no_fault_env(monkeypatch):
    monkeypatch.delenv(faults.FAULT_INJECT_ENV, raising=False)
    faults.reset_fault_counts()
    yield
    faults.set_fault_hook(None)


def _storage(url: str) -> Storage:
    st = Storage(url)
    st.ensure_dir(create=True)
    return st


def _save(st: Storage, step: int, holds_engine: bool = True, prefix: str = "") -> str:
    name = f"{prefix + '_' if prefix else ''}checkpoint_{step}.pt"
    payload = {"w": torch.full((64,), float(step)), "step": step}
    write_checkpoint(
        st, name, payload, iteration=step, holds_engine=holds_engine, filename_prefix=prefix
    )
    return name


def _overwrite(st: Storage, name: str, data: bytes) -> None:
    with st.fs.open(st.path(name), "wb") as f:
        f.write(data)


def test_hashing_writer_digest_matches_content_across_small_and_large_writes():
    sink = io.BytesIO()
    chunks = [b"a" * 10, os.urandom(3 << 20), b"tail"]  # the big one is hashed on the helper thread
    with HashingWriter(sink) as w:
        for c in chunks:
            w.write(c)
    content = sink.getvalue()
    assert w.size == len(content) == sum(map(len, chunks))
    assert w.hexdigest() == hashlib.sha256(content).hexdigest()
    stream = io.BytesIO(content)
    stream.readinto = None  # also the path for file objects without readinto
    for raw in (io.BytesIO(content), stream):
        assert hash_stream(raw) == (len(content), w.hexdigest())


def test_write_and_read_back_with_manifest_fields(dir_url):
    st = _storage(dir_url)
    name = _save(st, 5)
    (entry,) = list_checkpoints(st)
    m = entry.manifest
    assert entry.manifest_name == manifest_name(name) == "checkpoint_5.pt.manifest.json"
    assert (m.payload, m.name, m.iteration, m.holds_engine, m.format_version) == (
        name,
        name,
        5,
        True,
        2,
    )
    data = st.read(name)
    assert (m.size, m.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    loaded = torch.load(io.BytesIO(data), weights_only=True)
    assert loaded["step"] == 5 and torch.equal(loaded["w"], torch.full((64,), 5.0))
    assert read_payload(st.url_of(name))["step"] == 5
    # nothing but the two files: no temporaries left behind
    assert sorted(st.list_files()) == sorted([name, manifest_name(name)])


def test_sequence_numbers_grow_past_everything_on_storage(dir_url):
    st = _storage(dir_url)
    for step in (1, 2, 3):
        _save(st, step)
    seqs = [e.manifest.sequence for e in list_checkpoints(st)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    # another writer (a restarted process, another job) counts on from what it finds
    other = write_checkpoint(Storage(dir_url), "other_1.pt", {"x": 1})
    assert other.sequence == max(seqs) + 1
    assert _save(st, 4) and list_checkpoints(st)[-1].manifest.sequence == max(seqs) + 2


def test_latest_is_highest_sequence_not_highest_iteration(dir_url):
    st = _storage(dir_url)
    _save(st, 50)
    _save(st, 10)  # e.g. a run restarted from an earlier point
    assert find_latest(st) == st.url_of("checkpoint_10.pt")


def test_latest_filters_on_engine_and_prefix(dir_url):
    st = _storage(dir_url)
    _save(st, 1, prefix="a")
    _save(st, 2, prefix="b")
    _save(st, 3, holds_engine=False)
    assert find_latest(st) == st.url_of("b_checkpoint_2.pt")
    assert find_latest(st, filename_prefix="a") == st.url_of("a_checkpoint_1.pt")
    assert find_latest(st, filename_prefix="zzz") is None


def _truncate(st, name, manifest):
    _overwrite(st, name, st.read(name)[: manifest.size // 2])


def _flip_byte(st, name, manifest):
    data = bytearray(st.read(name))
    data[len(data) // 2] ^= 0x01
    _overwrite(st, name, bytes(data))


def _drop_manifest(st, name, manifest):
    st.remove(manifest_name(name))


def _drop_payload(st, name, manifest):
    st.remove(name)


def _half_manifest(st, name, manifest):
    _overwrite(st, manifest_name(name), manifest.to_json()[:40])


@pytest.mark.parametrize(
    "corrupt, load_error",
    [
        (_truncate, "expected {size} bytes"),
        (_flip_byte, "SHA-256 mismatch"),
        (_drop_manifest, None),
        (_drop_payload, None),
        (_half_manifest, "invalid manifest"),
    ],
    ids=[
        "truncated",
        "flipped-byte",
        "payload-without-manifest",
        "manifest-without-payload",
        "partial-manifest",
    ],
)
def test_corrupt_newest_falls_back_to_previous_valid(dir_url, corrupt, load_error):
    st = _storage(dir_url)
    good = _save(st, 1)
    bad = _save(st, 2)
    manifest = list_checkpoints(st)[-1].manifest
    corrupt(st, bad, manifest)
    if corrupt is _drop_manifest:  # an orphan payload is simply not a checkpoint
        assert find_latest(st) == st.url_of(good)
    else:
        with pytest.warns(RuntimeWarning, match="invalid checkpoint"):
            assert find_latest(st) == st.url_of(good)
    assert read_payload(st.url_of(good))["step"] == 1
    if load_error is not None:
        with pytest.raises(
            CheckpointIntegrityError, match=load_error.format(size=manifest.size)
        ) as info:
            read_payload(st.url_of(bad))
        assert bad in str(info.value) or manifest_name(bad) in str(info.value)


def test_unverified_payload_loads_with_a_warning(dir_url):
    st = _storage(dir_url)
    buf = io.BytesIO()
    torch.save({"x": torch.ones(2)}, buf)
    _overwrite(st, "plain.pt", buf.getvalue())
    with pytest.warns(RuntimeWarning, match="no manifest"):
        assert torch.equal(read_payload(st.url_of("plain.pt"))["x"], torch.ones(2))


def test_manifest_rejects_unknown_format_and_missing_fields():
    m = Manifest("c.pt", "c.pt", {"c.pt": FileEntry(1, "ab" * 32)}, sequence=1, iteration=1)
    d = json.loads(m.to_json())
    assert Manifest.from_json(m.to_json()) == m
    with pytest.raises(ValueError, match="format_version"):
        Manifest.from_json(json.dumps({**d, "format_version": 99}).encode())
    del d["sequence"]
    with pytest.raises(ValueError, match=r"missing fields \['sequence'\]"):
        Manifest.from_json(json.dumps(d).encode())


def test_payload_that_weights_only_cannot_load_is_refused_before_writing(dir_url):
    import numpy as np

    st = _storage(dir_url)
    with pytest.raises(TypeError, match=r"checkpoint\['opt'\]\['x'\] is a numpy.ndarray"):
        write_checkpoint(st, "c_1.pt", {"opt": {"x": np.zeros(2)}})
    assert st.list_files() == {}


PRE_COMMIT = ("payload_partial", "before_commit", "before_manifest", "manifest_partial")


@pytest.mark.parametrize("phase", PRE_COMMIT)
def test_storage_failure_before_the_commit_keeps_previous_checkpoint(dir_url, monkeypatch, phase):
    st = _storage(dir_url)
    good = _save(st, 1)
    monkeypatch.setenv(faults.FAULT_INJECT_ENV, f"{phase}:1:raise")
    with pytest.raises(OSError, match=f"phase '{phase}'"):
        _save(st, 2)
    monkeypatch.delenv(faults.FAULT_INJECT_ENV)
    # Until the manifest is committed the new checkpoint does not exist.
    assert find_latest(st) == st.url_of(good)
    assert read_payload(st.url_of(good))["step"] == 1
    leftovers = [n for n in st.list_files() if ".tmp-" in n]
    assert leftovers == []  # a failed atomic write removes its temporary file


def test_failure_after_the_commit_is_a_warning_not_a_failed_save(dir_url, monkeypatch):
    st = _storage(dir_url)
    _save(st, 1)
    monkeypatch.setenv(faults.FAULT_INJECT_ENV, "before_cleanup:1:raise")
    with pytest.warns(
        RuntimeWarning, match=r"checkpoint_2.pt is saved, but tidying up .*before_cleanup"
    ):
        _save(st, 2)
    monkeypatch.delenv(faults.FAULT_INJECT_ENV)
    assert find_latest(st) == st.url_of("checkpoint_2.pt")
    assert read_payload(st.url_of("checkpoint_2.pt"))["step"] == 2


def test_fault_spec_is_validated(monkeypatch):
    for spec, msg in [
        ("nope", "expected a phase"),
        ("before_manifest:x", "COUNT"),
        ("before_manifest:1:boom", "action"),
    ]:
        monkeypatch.setenv(faults.FAULT_INJECT_ENV, spec)
        with pytest.raises(ValueError, match=msg):
            faults.fault_point("before_manifest")


def test_fault_fires_only_at_the_requested_count(monkeypatch):
    monkeypatch.setenv(faults.FAULT_INJECT_ENV, "before_manifest:2:raise")
    faults.fault_point("before_manifest")
    faults.fault_point("before_commit")
    with pytest.raises(OSError):
        faults.fault_point("before_manifest")
    faults.fault_point("before_manifest")  # third time: no fault


def test_disk_saver_require_empty_counts_only_checkpoint_files(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "notes.txt").write_text("not a checkpoint")
    DiskSaver(str(d))  # other files do not count
    (d / "model_1.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"model_1\.pt.*require_empty=False"):
        DiskSaver(str(d))
    DiskSaver(str(d), require_empty=False)
    with pytest.raises(ValueError, match="not found"):
        DiskSaver(str(tmp_path / "missing"), create_dir=False)
    with pytest.raises(TypeError, match="save_on_rank"):
        DiskSaver(str(d), require_empty=False, save_on_rank=1)


def test_files_of_unknown_writers_are_left_alone(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    stale = d / ".checkpoint_3.pt.tmp-0123456789ab"  # whose? nothing proves it is ours
    stale.write_bytes(b"half a checkpoint")
    (d / "checkpoint_4.pt").write_bytes(b"someone's file")  # same name, no manifest
    saver = DiskSaver(str(d), require_empty=False)
    saver({"x": torch.ones(1)}, "checkpoint_4.pt", {"iteration": 4})
    assert stale.exists() and (d / "checkpoint_4.pt").read_bytes() == b"someone's file"
    (m,) = list_checkpoints(Storage(str(d)))
    assert m.manifest.name == "checkpoint_4.pt" and m.manifest.payload != "checkpoint_4.pt"
    assert read_payload(str(d / m.manifest.payload))["x"].item() == 1.0
