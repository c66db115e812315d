"""distengine.utils: seeding, logging on rank 0 only, tensor mapping, one-hot, hashed copies."""

import hashlib
import io
import logging
import random
from collections import namedtuple

import numpy as np
import pytest
import torch

from distengine.utils import (
    apply_to_tensor,
    apply_to_type,
    convert_tensor,
    hash_checkpoint,
    manual_seed,
    setup_logger,
    to_onehot,
)


def test_manual_seed_seeds_python_torch_and_numpy():
    manual_seed(7)
    first = (random.random(), torch.rand(2), np.random.rand())
    manual_seed(7)
    second = (random.random(), torch.rand(2), np.random.rand())
    assert first[0] == second[0] and torch.equal(first[1], second[1]) and first[2] == second[2]


def test_convert_and_apply_keep_the_containers():
    Pair = namedtuple("Pair", ["x", "y"])
    batch = {"a": [torch.ones(1), (torch.zeros(1), "text")], "b": Pair(torch.ones(2), "label")}
    moved = convert_tensor(batch, device="cpu", non_blocking=True)
    assert isinstance(moved["b"], Pair) and isinstance(moved["a"][1], tuple)
    assert moved["a"][1][1] == "text" and moved["b"].y == "label"
    doubled = apply_to_tensor(batch, lambda t: t * 2)
    assert torch.equal(doubled["b"].x, torch.full((2,), 2.0)) and doubled["b"].y == "label"
    assert doubled["a"][1][1] == "text"
    t = torch.ones(1)
    assert convert_tensor(t) is t  # no device: nothing moves
    assert apply_to_type([1, [2, "s"]], int, lambda v: -v) == [-1, [-2, "s"]]
    with pytest.raises(TypeError, match="expected"):
        apply_to_type({"a": object()}, torch.Tensor, lambda t: t)


def test_to_onehot_shapes_and_dtype():
    out = to_onehot(torch.tensor([[0, 2], [1, 1]]), 3)
    assert out.shape == (2, 3, 2) and out.dtype == torch.uint8
    assert out[:, :, 0].tolist() == [[1, 0, 0], [0, 1, 0]]
    with pytest.raises(ValueError, match="num_classes"):
        to_onehot(torch.tensor([0]), 0)


def test_setup_logger_writes_on_rank_0_only_and_resets():
    stream = io.StringIO()
    log = setup_logger("distengine-test-a", stream=stream, format="%(name)s|%(message)s")
    log.info("hello")
    assert stream.getvalue() == "distengine-test-a|hello\n" and not log.propagate
    again = setup_logger("distengine-test-a", stream=io.StringIO())  # kept as configured
    again.info("twice")
    assert stream.getvalue().endswith("twice\n")
    other = io.StringIO()
    setup_logger("distengine-test-a", stream=other, format="%(message)s!", reset=True)
    log.info("reset")
    assert other.getvalue() == "reset!\n" and "reset" not in stream.getvalue()
    silent = io.StringIO()
    worker = setup_logger("distengine-test-b", stream=silent, distributed_rank=1)
    worker.warning("from rank 1")
    assert silent.getvalue() == ""
    assert all(isinstance(h, logging.NullHandler) for h in worker.handlers)


def test_setup_logger_file(tmp_path):
    path = tmp_path / "log.txt"
    log = setup_logger("distengine-test-file", filepath=str(path), stream=io.StringIO())
    log.info("é in the file")
    for handler in log.handlers:
        handler.flush()
    assert "é in the file" in path.read_text(encoding="utf-8")


def test_hash_checkpoint_copies_under_the_hashed_name(tmp_path):
    source = tmp_path / "model.pt"
    torch.save({"w": torch.arange(4)}, source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    target, sha = hash_checkpoint(str(source), str(tmp_path / "release"))
    assert sha == digest and target.name == f"model-{digest[:8]}.pt"
    assert source.exists()  # copied, not moved
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.arange(4))
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        hash_checkpoint(tmp_path / "missing.pt", tmp_path)


def test_tree_map_is_ignites_private_helper():
    """Ignite's tests import ``_tree_map`` from ``ignite.utils``."""
    import collections

    from distengine.utils import _tree_map

    Pair = collections.namedtuple("Pair", "a b")
    seen = []

    def record(v, key):
        seen.append((key, v))
        return v * 10

    out = _tree_map(record, {"x": [1, (2, 3)], "p": Pair(4, 5), "s": "ab"})
    assert out == {"x": [10, (20, 30)], "p": Pair(40, 50), "s": "ab" * 10}
    assert seen == [(0, 1), (0, 2), (1, 3), (None, 4), (None, 5), ("s", "ab")]
