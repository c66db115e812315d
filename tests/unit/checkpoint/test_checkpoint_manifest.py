"""Manifests are trusted only when intact: their own checksum, strict fields, a size cap,
and the binding to their payload. A bad manifest is skipped with a warning naming it; the
rest of the directory keeps working; ``latest`` checks what ``load_objects`` checks."""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc
import uuid

import pytest
import torch

from distengine.checkpoint import (
    MAX_MANIFEST_BYTES,
    CheckpointIntegrityError,
    Storage,
    find_latest,
    list_checkpoints,
    manifest_name,
    read_payload,
    write_checkpoint,
)
from distengine.engine import Engine, Events
from distengine.handlers.checkpoint import Checkpoint
from distengine.handlers.disk_saver import DiskSaver


@pytest.fixture(params=["local", "memory"])
def st(request, tmp_path) -> Storage:
    url = (
        str(tmp_path / "ckpt") if request.param == "local" else f"memory://m-{uuid.uuid4().hex[:8]}"
    )
    storage = Storage(url)
    storage.ensure_dir(create=True)
    return storage


def _save(st: Storage, step: int) -> str:
    name = f"checkpoint_{step}.pt"
    write_checkpoint(
        st,
        name,
        {"step": step, "w": torch.full((8,), float(step))},
        iteration=step,
        holds_engine=True,
    )
    return name


def _put(st: Storage, name: str, data: bytes) -> None:
    with st.fs.open(st.path(name), "wb") as f:
        f.write(data)


def _edit(st: Storage, payload: str, change, *, reseal: bool) -> None:
    """Rewrites the manifest of ``payload`` with ``change(dict)`` applied; with ``reseal``
    the checksum is recomputed, so only the field checks can catch the change."""
    d = json.loads(st.read(manifest_name(payload)))
    change(d)
    if reseal:
        body = {k: v for k, v in d.items() if k != "checksum"}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        d["checksum"] = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    _put(st, manifest_name(payload), json.dumps(d).replace('"__inf__"', "Infinity").encode())


def test_a_bit_flip_in_a_manifest_is_caught_by_its_checksum(st):
    oldest = _save(st, 1)
    _save(st, 2)
    newest = _save(st, 3)
    raw = bytearray(st.read(manifest_name(oldest)))
    at = raw.index(b'"sequence": ') + len(b'"sequence": ')
    raw[at] ^= 0x08  # "1" -> "9": the oldest would now look like the newest
    _put(st, manifest_name(oldest), bytes(raw))
    with pytest.warns(
        RuntimeWarning, match=rf"{manifest_name(oldest)}: invalid manifest: checksum mismatch"
    ):
        assert find_latest(st) == st.url_of(newest)
    with pytest.raises(CheckpointIntegrityError, match="checksum mismatch"):
        read_payload(st.url_of(oldest))


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda d: d.update(sequence="__inf__"), "Infinity is not a valid JSON number"),
        (lambda d: d.update(priority="2"), "field 'priority': expected a finite number, got '2'"),
        (lambda d: d.update(sequence=-1), "field 'sequence': expected an integer >= 0"),
        (lambda d: d.update(iteration=True), "field 'iteration'"),
        (lambda d: d.update(holds_engine="yes"), "field 'holds_engine'"),
        (lambda d: d["files"]["checkpoint_2.pt"].update(size="12"), "size"),
        (lambda d: d.update(payload="../checkpoint_1.pt"), "field 'payload'"),
        (lambda d: d.pop("run_id"), r"missing fields \['run_id'\]"),
    ],
    ids=[
        "infinity",
        "priority-str",
        "negative",
        "bool-int",
        "str-bool",
        "size-str",
        "escape",
        "missing",
    ],
)
def test_a_malformed_field_skips_that_manifest_only(st, change, problem):
    good = _save(st, 1)
    bad = _save(st, 2)
    _edit(st, bad, change, reseal=True)
    with pytest.warns(
        RuntimeWarning, match=rf"{manifest_name(bad)}: invalid manifest: .*{problem}"
    ):
        assert find_latest(st) == st.url_of(good)
    # the directory keeps working: the next save goes past every number seen
    third = _save(st, 3)
    assert list_checkpoints(st)[-1].manifest.payload == third
    with pytest.warns(RuntimeWarning):
        assert find_latest(st) == st.url_of(third)


def test_an_oversized_manifest_is_skipped_without_being_read(tmp_path):
    st = Storage(str(tmp_path))
    good = _save(st, 1)
    huge = os.path.join(str(tmp_path), "checkpoint_2.pt.manifest.json")
    with open(huge, "wb") as f:
        f.truncate(64 << 20)  # sparse: 64 MiB that cost no disk
    assert MAX_MANIFEST_BYTES < 64 << 20
    tracemalloc.start()
    try:
        with pytest.warns(
            RuntimeWarning, match=r"checkpoint_2.pt.manifest.json: 67108864 bytes, larger than"
        ):
            assert find_latest(st) == st.url_of(good)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
    # a manifest that grew past the cap after the listing is cut at the cap, not read whole
    with pytest.raises(CheckpointIntegrityError, match="larger than"):
        read_payload(os.path.join(str(tmp_path), "checkpoint_2.pt"))


def test_swapped_manifests_are_refused_by_latest_as_by_load(st):
    valid = _save(st, 1)
    a = _save(st, 2)
    b = _save(st, 3)
    ma, mb = st.read(manifest_name(a)), st.read(manifest_name(b))
    _put(st, manifest_name(a), mb)
    _put(st, manifest_name(b), ma)
    with pytest.warns(RuntimeWarning, match="swapped or renamed manifest"):
        latest = find_latest(st)
    assert latest == st.url_of(valid)
    assert read_payload(latest)["step"] == 1
    for name in (a, b):
        with pytest.raises(CheckpointIntegrityError, match="swapped or renamed manifest"):
            read_payload(st.url_of(name))


def test_format_1_manifests_are_still_read(tmp_path):
    """Checkpoints written before manifests carried a checksum stay loadable."""
    d = str(tmp_path)
    buf = {"trainer": {"iteration": 3}}
    torch.save(buf, os.path.join(d, "checkpoint_3.pt"))
    data = open(os.path.join(d, "checkpoint_3.pt"), "rb").read()
    v1 = {
        "format_version": 1, "sequence": 4, "iteration": 3, "epoch": 1, "world_size": 1,
        "filename_prefix": "", "holds_engine": True, "basename": "checkpoint",
        "score_name": None, "priority": 3, "payload": "checkpoint_3.pt",
        "files": {"checkpoint_3.pt": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}},
        "created_unix": 1.0,
    }  # fmt: skip
    with open(os.path.join(d, "checkpoint_3.manifest.json"), "w") as f:
        json.dump(v1, f)
    latest = Checkpoint.latest(d)
    assert latest == os.path.join(d, "checkpoint_3.pt")
    assert read_payload(latest)["trainer"]["iteration"] == 3
    # a new save counts on from it and leaves it alone (no handler owns it)
    engine = Engine(lambda e, b: None)
    h = Checkpoint({"trainer": engine}, DiskSaver(d, require_empty=False))
    engine.add_event_handler(Events.ITERATION_COMPLETED, h)
    engine.run([0], max_epochs=1)
    entries = list_checkpoints(Storage(d))
    assert [e.manifest.sequence for e in entries] == [4, 5]
    assert os.path.exists(os.path.join(d, "checkpoint_3.pt"))
