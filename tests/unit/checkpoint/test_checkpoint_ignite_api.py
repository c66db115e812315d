"""Ignite's checkpoint API, with Ignite itself as the oracle: the BaseSaveHandler protocol
(calls, metadata keys, removals), ModelCheckpoint, lists and dicts of objects in
``to_save``/``to_load``."""

from __future__ import annotations

import os
from pathlib import Path

import ignite.engine as ig_engine  # oracles are test dependencies: no silent skip
import ignite.handlers as ig_handlers
import ignite.handlers.checkpoint as ig_checkpoint
import pytest
import torch
from torch import nn

import distengine.engine as de_engine
from distengine.engine import Engine
from distengine.handlers import BaseSaveHandler, Checkpoint, DiskSaver, ModelCheckpoint

SCORES = [0.3, 0.1, 0.7, 0.7, 0.2, 0.9]


def _recorder(base: type):
    class Recorder(base):
        def __init__(self):
            self.saves: list[tuple] = []
            self.removes: list[str] = []

        def __call__(self, checkpoint, filename, metadata=None):
            self.saves.append((filename, metadata, sorted(checkpoint)))

        def remove(self, filename):
            self.removes.append(filename)

    return Recorder()


def _drive(engine_mod, checkpoint_cls, handler, **kwargs):
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scores = iter(SCORES)
    engine = engine_mod.Engine(lambda e, b: None)
    ckpt = checkpoint_cls(
        {"model": model, "opt": opt},
        handler,
        score_function=lambda e: next(scores),
        **kwargs,
    )
    engine.add_event_handler(engine_mod.Events.ITERATION_COMPLETED, ckpt)
    engine.run([0, 1, 2], max_epochs=2)
    return ckpt


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_saved": 2, "score_name": "acc"},
        {"n_saved": 1, "filename_prefix": "best"},
        {"n_saved": None},
    ],
)
def test_a_base_save_handler_gets_ignites_calls_and_metadata(kwargs):
    ours = _recorder(BaseSaveHandler)
    theirs = _recorder(ig_checkpoint.BaseSaveHandler)
    a = _drive(de_engine, Checkpoint, ours, **kwargs)
    b = _drive(ig_engine, ig_handlers.Checkpoint, theirs, **kwargs)
    assert ours.saves == theirs.saves and len(ours.saves) > 0
    assert all(set(meta) == {"basename", "score_name", "priority"} for _, meta, _ in ours.saves)
    assert ours.removes == theirs.removes
    assert [tuple(i) for i in a.state_dict()["_saved"]] == [
        tuple(i) for i in b.state_dict()["_saved"]
    ]
    assert a.last_checkpoint == b.last_checkpoint


def test_save_handler_checks_and_disk_saver_is_a_base_save_handler(tmp_path):
    assert isinstance(DiskSaver(str(tmp_path)), BaseSaveHandler)
    with pytest.raises(
        TypeError,
        match="should be a string or Path object or callable or inherit from BaseSaveHandler",
    ):
        Checkpoint({"m": nn.Linear(1, 1)}, 12)
    h = Checkpoint({"m": nn.Linear(1, 1)}, lambda c, f: None)
    with pytest.raises(AttributeError, match="should be of type `DiskSaver`"):
        h.reload_objects({"m": nn.Linear(1, 1)}, global_step=1)


def _model_checkpoint_run(cls, engine_mod, d: Path):
    torch.manual_seed(0)
    model = nn.Linear(3, 3)
    handler = cls(d, "myprefix", n_saved=2, require_empty=False)
    engine = engine_mod.Engine(lambda e, b: None)
    engine.add_event_handler(
        engine_mod.Events.EPOCH_COMPLETED(every=2), handler, {"mymodel": model}
    )
    engine.run([0, 1, 2, 3, 4], max_epochs=6)
    return handler, model


def test_model_checkpoint_matches_ignite(tmp_path):
    ours, model = _model_checkpoint_run(ModelCheckpoint, de_engine, tmp_path / "ours")
    theirs, _ = _model_checkpoint_run(ig_handlers.ModelCheckpoint, ig_engine, tmp_path / "ignite")
    pts = sorted(f for f in os.listdir(tmp_path / "ours") if f.endswith(".pt"))
    assert (
        pts
        == sorted(os.listdir(tmp_path / "ignite"))
        == ["myprefix_mymodel_20.pt", "myprefix_mymodel_30.pt"]
    )
    assert isinstance(ours.last_checkpoint, Path)
    assert ours.last_checkpoint.name == theirs.last_checkpoint.name == "myprefix_mymodel_30.pt"
    sd = torch.load(ours.last_checkpoint, weights_only=True)
    assert sd.keys() == model.state_dict().keys()
    target = nn.Linear(3, 3)
    ours.reload_objects({"mymodel": target}, global_step=30)
    assert torch.equal(target.weight, model.weight)
    with pytest.raises(RuntimeError, match="No objects to checkpoint found"):
        ours(Engine(lambda e, b: None), {})


def _gan():
    torch.manual_seed(1)
    g, d = nn.Linear(2, 2), nn.Linear(2, 1)
    return {
        "nets": [g, d],
        "opts": {
            "g": torch.optim.SGD(g.parameters(), lr=0.1),
            "d": torch.optim.Adam(d.parameters()),
        },
    }


def test_lists_and_dicts_of_objects_save_and_load_as_in_ignite(tmp_path):
    objs = _gan()
    for net in objs["nets"]:  # give the optimizers some state
        net(torch.randn(4, 2)).sum().backward()
    for opt in objs["opts"].values():
        opt.step()
    trainer = Engine(lambda e, b: None)
    trainer.run([0], max_epochs=1)
    ours = Checkpoint({**objs, "trainer": trainer}, str(tmp_path / "ours"))
    ours(trainer)
    theirs = ig_handlers.Checkpoint(objs, str(tmp_path / "ignite"))
    theirs(ig_engine.Engine(lambda e, b: None))
    a = torch.load(ours.last_checkpoint, weights_only=True)
    b = torch.load(theirs.last_checkpoint, weights_only=True)
    assert type(a["nets"]) is list and len(a["nets"]) == 2 and sorted(a["opts"]) == ["d", "g"]
    assert [sorted(x) for x in a["nets"]] == [sorted(x) for x in b["nets"]]
    assert all(torch.equal(a["nets"][1][k], b["nets"][1][k]) for k in a["nets"][1])
    assert a["nets"][0].keys() == objs["nets"][0].state_dict().keys()
    fresh = _gan()
    Checkpoint.load_objects({**fresh, "trainer": Engine(lambda e, b: None)}, ours.last_checkpoint)
    assert torch.equal(fresh["nets"][0].weight, objs["nets"][0].weight)
    assert (
        fresh["opts"]["d"].state_dict()["state"].keys()
        == objs["opts"]["d"].state_dict()["state"].keys()
    )
    with pytest.raises(
        TypeError, match=r"Object to_save\['nets'\]\[1\] \(int\) should have `state_dict` method"
    ):
        Checkpoint({"nets": [nn.Linear(1, 1), 3]}, str(tmp_path / "bad"))
    with pytest.raises(ValueError, match=r"to_load\['nets'\]: expected a list of 3 states"):
        Checkpoint.load_objects({"nets": [nn.Linear(2, 2)] * 3}, ours.last_checkpoint, strict=False)
