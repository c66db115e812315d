"""Checkpoint.load_objects: verification, map_location, wrapped models, per-rank state, resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distengine.checkpoint import CheckpointIntegrityError, read_payload
from distengine.checkpoint.content import RESERVED_KEY
from distengine.engine import Engine, Events
from distengine.handlers.checkpoint import Checkpoint


class Wrapper(nn.Module):
    """Gives keys the ``module.`` prefix, as DDP's state_dict does."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


class Compiled(nn.Module):
    """The structure of ``torch.compile``'s OptimizedModule (the model as ``_orig_mod``),
    without importing dynamo, which costs seconds."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self._orig_mod = module


class RankProbe:
    """An object with per-rank state only."""

    def __init__(self, value: int = 0):
        self.value = value

    def rank_state_dict(self):
        return {"value": self.value}

    def load_rank_state_dict(self, sd):
        self.value = sd["value"]


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _save_once(tmp_path, to_save) -> str:
    engine = Engine(lambda e, b: None)
    handler = Checkpoint(to_save, str(tmp_path))
    engine.add_event_handler(Events.COMPLETED, handler)
    engine.run([0], max_epochs=1)
    return handler.last_checkpoint


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_map_location_is_applied(tmp_path):
    path = _save_once(tmp_path, {"model": _model(0), "opt_probe": RankProbe(3)})
    seen = []

    def location(storage, loc):
        seen.append(loc)
        return storage

    target = _model(1)
    Checkpoint.load_objects({"model": target}, path, map_location=location, strict=False)
    assert seen and set(seen) == {"cpu"} and _same(target, _model(0))
    meta = read_payload(path, map_location="meta")
    assert meta["model"]["0.weight"].device.type == "meta"


@pytest.mark.parametrize("wrap_saved", ["plain", "module.", "_orig_mod.", "_orig_mod.module."])
@pytest.mark.parametrize("wrap_target", ["plain", "dataparallel", "compiled"])
def test_prefixes_are_stripped_and_wrappers_unwrapped(tmp_path, wrap_saved, wrap_target):
    source = _model(0)
    prefix = "" if wrap_saved == "plain" else wrap_saved
    state = {prefix + k: v for k, v in source.state_dict().items()}
    path = tmp_path / "raw.pt"
    torch.save({"model": state, "other": {"x": 1}}, path)  # e.g. saved by hand from a wrapped model
    target = _model(1)
    wrapped = {
        "plain": target,
        "dataparallel": nn.DataParallel(target),
        "compiled": Compiled(target),
    }[wrap_target]
    with pytest.warns(RuntimeWarning, match="no manifest"):
        Checkpoint.load_objects({"model": wrapped}, str(path))
    assert _same(target, source)


def test_wrapped_models_are_saved_without_prefixes(tmp_path):
    source = _model(0)
    path = _save_once(tmp_path, {"model": Wrapper(source)})
    assert list(torch.load(path, weights_only=True)) == [f"module.{k}" for k in source.state_dict()]
    path2 = _save_once(tmp_path / "c", {"model": Compiled(source), "probe": RankProbe()})
    assert list(torch.load(path2, weights_only=True)["model"]) == list(source.state_dict())


def test_strict_controls_missing_objects_and_keys(tmp_path):
    path = _save_once(tmp_path, {"model": _model(0), "probe": RankProbe(1)})
    with pytest.raises(
        ValueError, match=r"Key 'absent' from to_load is not found in the checkpoint"
    ):
        Checkpoint.load_objects({"model": _model(1), "absent": RankProbe()}, path)
    bigger = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="Missing key"):
        Checkpoint.load_objects({"model": bigger}, path)
    Checkpoint.load_objects({"model": bigger, "absent": RankProbe()}, path, strict=False)
    assert torch.equal(bigger[0].weight, _model(0)[0].weight)


def test_corrupt_file_is_refused_with_its_name(tmp_path):
    path = _save_once(tmp_path, {"model": _model(0), "probe": RankProbe()})
    data = bytearray(open(path, "rb").read())
    data[-100] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(CheckpointIntegrityError, match="checkpoint_1.pt: SHA-256 mismatch"):
        Checkpoint.load_objects({"model": _model(1)}, path)


def test_rank_state_loaded_at_same_world_size_skipped_at_another():
    probe = RankProbe()
    same = {"probe": {}, RESERVED_KEY: {"world_size": 1, "rank_states": {"probe": [{"value": 7}]}}}
    Checkpoint.load_objects({"probe": probe}, same)
    assert probe.value == 7
    other = {
        RESERVED_KEY: {"world_size": 2, "rank_states": {"probe": [{"value": 8}, {"value": 9}]}}
    }
    with pytest.warns(RuntimeWarning, match="world size 2, loading at world size 1"):
        Checkpoint.load_objects({"probe": probe}, other)
    assert probe.value == 7


def _train(data, max_epochs, *, resume_from=None, checkpoint_dir=None):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def step(engine, batch):
        opt.zero_grad()
        noise = torch.randn(1)  # consumes the RNG: resume must restore it
        loss = ((model(batch) - noise) ** 2).mean()
        loss.backward()
        opt.step()

    trainer = Engine(step)
    to_save = {"model": model, "opt": opt, "trainer": trainer}
    if checkpoint_dir is not None:
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED(every=5), Checkpoint(to_save, checkpoint_dir)
        )
    if resume_from is not None:
        Checkpoint.load_objects(to_save, resume_from)
    trainer.run(data, max_epochs=max_epochs)
    return model


def test_resume_from_a_mid_epoch_checkpoint_is_bitwise_exact(tmp_path):
    data = [torch.full((2, 4), float(i)) for i in range(4)]
    full = _train(data, 3)
    _train(data, 2, checkpoint_dir=str(tmp_path))  # saves at iteration 5 (mid-epoch 2), keeps it
    latest = Checkpoint.latest(str(tmp_path))
    assert latest.endswith("checkpoint_5.pt")
    resumed = _train(data, 3, resume_from=latest)
    assert _same(resumed, full)
