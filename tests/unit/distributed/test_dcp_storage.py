"""The DCP storage layer of sharded checkpoints in one process: item digests, formats.

``save_state``/``load_state`` run DCP without a process group here; the files live in a
dict, written and read by the two callables the checkpoint package normally provides.
"""

from __future__ import annotations

import hashlib
import io

import pytest
import torch

from distengine.distributed import sharded as dsh
from distengine.distributed.dcp_storage import ITEM_DIGEST, decode_metadata


def _save(state: dict) -> tuple[dict, dict]:
    files: dict[str, bytes] = {}

    def write_file(name, produce):
        buf = io.BytesIO()
        produce(buf)
        files[name] = buf.getvalue()
        return len(files[name]), hashlib.sha256(files[name]).hexdigest()

    return dsh.save_state(state, "r0.distcp", write_file), files


def _reader(files: dict, checked: list):
    """read_file as the checkpoint package writes it: ranged reads, each checked."""

    def read_file(name, spans, on_span):
        for i, (start, length, digest, into) in enumerate(spans):
            data = memoryview(files[name])[start : start + length]
            if into is not None:
                memoryview(into).cast("B")[:length] = data
                data = memoryview(into).cast("B")[:length]
            if not digest.matches(data):
                raise ValueError(f"{digest.algorithm} mismatch at {start}")
            checked.append(digest.algorithm)
            on_span(i, data)

    return read_file


def _state() -> dict:
    torch.manual_seed(0)
    return {"m": {"w": torch.randn(5, 3), "b": torch.randn(3).to(torch.bfloat16), "step": 7}}


def _empty() -> dict:
    return {"m": {"w": torch.zeros(5, 3), "b": torch.zeros(3, dtype=torch.bfloat16), "step": 0}}


def test_items_carry_xxh3_digests_that_every_read_checks():
    md, files = _save(_state())
    assert md["format"] == 2 and md["digest"] == ITEM_DIGEST == "xxh3_128"
    assert all(len(item[-1]) == 32 for item in md["items"])  # 128 bits, hex
    target, checked = _empty(), []
    dsh.load_state(target, md, _reader(files, checked))
    assert torch.equal(target["m"]["w"], _state()["m"]["w"])
    assert torch.equal(target["m"]["b"], _state()["m"]["b"]) and target["m"]["step"] == 7
    assert checked == ["xxh3_128"] * len(md["items"])

    damaged = bytearray(files["r0.distcp"])
    damaged[10] ^= 1  # inside the first tensor
    with pytest.raises(ValueError, match="xxh3_128 mismatch at 0"):
        dsh.load_state(_empty(), md, _reader({"r0.distcp": bytes(damaged)}, []))


def test_metadata_of_format_1_with_sha256_per_item_still_loads():
    md, files = _save(_state())
    data = files["r0.distcp"]
    old = {k: v for k, v in md.items() if k != "digest"}
    old["format"] = 1  # what saves wrote before XXH3-128: SHA-256 per item
    old["items"] = [
        [*item[:-1], hashlib.sha256(data[item[3] : item[3] + item[4]]).hexdigest()]
        for item in md["items"]
    ]
    target, checked = _empty(), []
    dsh.load_state(target, old, _reader(files, checked))
    assert torch.equal(target["m"]["w"], _state()["m"]["w"]) and target["m"]["step"] == 7
    assert checked == ["sha256"] * len(md["items"])


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"format": 3}, "expected format 1 or 2, got 3"),
        ({"digest": "md5"}, "expected an item digest in \\['sha256', 'xxh3_128'\\], got 'md5'"),
        ({"format": 1}, "expected a sha256 digest \\(64 hex digits\\)"),  # xxh3 values
    ],
)
def test_metadata_with_an_unknown_format_or_digest_is_refused(change, expected):
    md, _ = _save(_state())
    with pytest.raises(ValueError, match=expected):
        decode_metadata({**md, **change})
