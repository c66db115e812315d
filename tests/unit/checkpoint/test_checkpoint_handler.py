"""Checkpoint at world size 1: Ignite's behaviour (Ignite itself is the oracle), retention
rebuilt after a restart, the handler's own state, and the save-handler forms."""

from __future__ import annotations

import os

import ignite.engine as ignite_engine  # oracles are test dependencies: no silent skip
import ignite.handlers as ignite_handlers
import pytest
import torch
from torch import nn

from distengine.engine import Engine, Events
from distengine.handlers.checkpoint import Checkpoint, CheckpointEvents
from distengine.handlers.disk_saver import DiskSaver

SCORES = [0.5, 0.7, 0.7, 0.2, 0.9, 0.1, 0.9, 0.3]


def _pt_files(d) -> list[str]:
    return sorted(f for f in os.listdir(d) if f.endswith(".pt"))


def _run(impl: str, d, kwargs: dict, *, keys=("model", "opt"), every=1, epochs=2, metric=False):
    """Runs 4 iterations x ``epochs`` with a checkpoint every ``every`` iterations.

    Returns the .pt files present after each save and the handler.
    """
    mod_engine, mod_handlers = (
        (ignite_engine, ignite_handlers) if impl == "ignite" else (None, None)
    )
    EngineCls = mod_engine.Engine if mod_engine else Engine
    EventsCls = mod_engine.Events if mod_engine else Events
    CheckpointCls = mod_handlers.Checkpoint if mod_handlers else Checkpoint
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    objects = {"model": model, "opt": torch.optim.SGD(model.parameters(), lr=0.1)}
    to_save = {k: objects[k] for k in keys}
    engine = EngineCls(lambda e, b: None)
    kwargs = dict(kwargs)
    if kwargs.pop("score", False):
        kwargs["score_function"] = lambda e: SCORES[(e.state.iteration - 1) % len(SCORES)]
    if kwargs.pop("int_score", False):
        kwargs["score_function"] = lambda e: 10 - e.state.iteration % 3
    if metric:

        @engine.on(EventsCls.ITERATION_COMPLETED)
        def _metric(e):
            e.state.metrics["acc"] = SCORES[(e.state.iteration - 1) % len(SCORES)]

    handler = CheckpointCls(to_save, str(d), **kwargs)
    trace: list[list[str]] = []
    engine.register_events(*type(handler).SAVED_CHECKPOINT.__class__)
    engine.add_event_handler(handler.SAVED_CHECKPOINT, lambda _: trace.append(_pt_files(d)))
    engine.add_event_handler(EventsCls.ITERATION_COMPLETED(every=every), handler)
    engine.run(list(range(4)), max_epochs=epochs)
    return trace, handler


CASES = {
    "default": {},
    "n_saved=3,prefix": {"n_saved": 3, "filename_prefix": "run"},
    "keep-all": {"n_saved": None},
    "score+name": {"score": True, "score_name": "acc", "n_saved": 2},
    "score+greater_or_equal": {
        "score": True,
        "score_name": "acc",
        "n_saved": 2,
        "greater_or_equal": True,
    },
    "score+step": {
        "score": True,
        "n_saved": 2,
        "global_step_transform": lambda e, ev: 100 * e.state.epoch,
    },
    "step-transform": {"global_step_transform": lambda e, ev: e.state.iteration * 10, "n_saved": 2},
    "pattern": {"filename_pattern": "{global_step}-{name}-x.{ext}", "n_saved": 2},
    "int-score": {"int_score": True, "score_name": "s", "n_saved": 2},
    "include_self": {"include_self": True, "n_saved": 2},
}


@pytest.mark.parametrize("case", list(CASES))
def test_files_and_retention_match_ignite(tmp_path, case):
    ours, handler = _run("ours", tmp_path / "ours", CASES[case])
    theirs, ihandler = _run("ignite", tmp_path / "ignite", CASES[case])
    assert ours == theirs and len(ours) > 0
    assert os.path.basename(handler.last_checkpoint) == os.path.basename(
        str(ihandler.last_checkpoint)
    )
    assert [list(i) for i in handler.state_dict()["_saved"]] == [
        list(i) for i in ihandler.state_dict()["_saved"]
    ]
    if CASES[case].get("include_self"):
        payload = torch.load(handler.last_checkpoint, weights_only=True)
        expected = torch.load(ihandler.last_checkpoint, weights_only=True)["checkpointer"]
        assert payload["checkpointer"]["_saved"] == expected["_saved"]


@pytest.mark.parametrize("keys", [("model",), ("model", "opt")])
def test_single_and_multi_object_names_and_payload_keys_match_ignite(tmp_path, keys):
    ours, handler = _run("ours", tmp_path / "ours", {}, keys=keys, every=3)
    theirs, ihandler = _run("ignite", tmp_path / "ignite", {}, keys=keys, every=3)
    assert ours == theirs
    a = torch.load(handler.last_checkpoint, weights_only=True)
    b = torch.load(ihandler.last_checkpoint, weights_only=True)
    assert sorted(a) == sorted(b)  # a single object is stored as its bare state_dict


def test_score_name_alone_reads_engine_metrics_like_ignite(tmp_path):
    ours, _ = _run("ours", tmp_path / "ours", {"score_name": "acc", "n_saved": 2}, metric=True)
    theirs, _ = _run(
        "ignite", tmp_path / "ignite", {"score_name": "acc", "n_saved": 2}, metric=True
    )
    assert ours == theirs


def _trainer_objects():
    model = nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    return model, engine


def test_retention_is_rebuilt_from_manifests_after_restart(tmp_path):
    model, engine = _trainer_objects()
    first = Checkpoint({"model": model, "trainer": engine}, str(tmp_path), n_saved=2)
    engine.add_event_handler(Events.ITERATION_COMPLETED, first)
    engine.run(list(range(3)), max_epochs=1)
    assert _pt_files(tmp_path) == ["checkpoint_2.pt", "checkpoint_3.pt"]
    # "restart": new objects, a handler that knows nothing, resuming from the latest
    model2, engine2 = _trainer_objects()
    Checkpoint.load_objects({"model": model2, "trainer": engine2}, Checkpoint.latest(str(tmp_path)))
    second = Checkpoint(
        {"model": model2, "trainer": engine2},
        DiskSaver(str(tmp_path), require_empty=False),
        n_saved=2,
    )
    engine2.add_event_handler(Events.ITERATION_COMPLETED, second)
    engine2.run(list(range(3)), max_epochs=2)
    assert _pt_files(tmp_path) == ["checkpoint_5.pt", "checkpoint_6.pt"]
    assert [f for _, f in second.state_dict()["_saved"]] == ["checkpoint_5.pt", "checkpoint_6.pt"]


def test_score_retention_rebuilt_keeps_the_best_across_restart(tmp_path):
    scores = iter([0.9, 0.1, 0.5, 0.95, 0.99, 0.3])
    model = nn.Linear(2, 2)
    kwargs = {"score_function": lambda e: next(scores), "score_name": "acc", "n_saved": 2}
    h1 = Checkpoint({"model": model}, str(tmp_path), **kwargs)
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(Events.ITERATION_COMPLETED, h1)
    engine.run([0, 1], max_epochs=1)  # keeps 0.9 and 0.1
    # "restart": a new process resumes the run (same run id) with a new handler
    h2 = Checkpoint({"model": model}, DiskSaver(str(tmp_path), require_empty=False), **kwargs)
    engine2 = Engine(lambda e, b: None)
    engine2.load_state_dict(engine.state_dict())
    engine2.add_event_handler(Events.ITERATION_COMPLETED, h2)
    engine2.run([0, 1], max_epochs=2)  # 0.5 replaces 0.1; 0.95 replaces 0.5
    assert _pt_files(tmp_path) == ["model_acc=0.9000.pt", "model_acc=0.9500.pt"]
    # a new run (not resumed) keeps its own best and leaves the first run's alone
    h3 = Checkpoint({"model": model}, DiskSaver(str(tmp_path), require_empty=False), **kwargs)
    engine3 = Engine(lambda e, b: None)
    engine3.add_event_handler(Events.ITERATION_COMPLETED, h3)
    engine3.run([0, 1], max_epochs=1)  # 0.99 and 0.3, both kept
    assert _pt_files(tmp_path) == [
        "model_acc=0.3000.pt",
        "model_acc=0.9000.pt",
        "model_acc=0.9500.pt",
        "model_acc=0.9900.pt",
    ]


def test_loaded_handler_state_wins_over_rebuild_and_reset_forgets(tmp_path):
    model = nn.Linear(2, 2)
    h = Checkpoint({"model": model}, str(tmp_path), n_saved=2)
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(Events.ITERATION_COMPLETED, h)
    engine.run([0, 1, 2], max_epochs=1)
    sd = h.state_dict()
    assert sd == {"_saved": [(2, "model_2.pt"), (3, "model_3.pt")]}
    h2 = Checkpoint({"model": model}, DiskSaver(str(tmp_path), require_empty=False), n_saved=2)
    h2.load_state_dict({"_saved": [[3, "model_3.pt"]]})
    assert h2.state_dict() == {"_saved": [(3, "model_3.pt")]}
    h2.reset()
    assert h2.last_checkpoint is None and h2.state_dict() == {"_saved": []}
    with pytest.raises(ValueError, match="_saved"):
        h2.load_state_dict({"saved": []})


def test_saved_checkpoint_event_is_registered_on_first_call_and_by_attach(tmp_path):
    model = nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    h = Checkpoint({"model": model}, str(tmp_path), n_saved=None)
    h.attach(engine, Events.EPOCH_COMPLETED)
    fired = []
    engine.add_event_handler(Checkpoint.SAVED_CHECKPOINT, lambda e: fired.append(e.state.epoch))
    engine.run([0, 1], max_epochs=3)
    assert fired == [1, 2, 3]
    assert Checkpoint.SAVED_CHECKPOINT is CheckpointEvents.SAVED_CHECKPOINT


def test_callable_save_handlers_of_both_forms(tmp_path):
    calls: list[tuple] = []
    model = nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    two = Checkpoint({"model": model}, lambda ckpt, name: calls.append(("two", name)))
    three = Checkpoint(
        {"model": model}, lambda ckpt, name, meta: calls.append(("three", name, meta["priority"]))
    )
    engine.add_event_handler(Events.ITERATION_COMPLETED, two)
    engine.add_event_handler(Events.ITERATION_COMPLETED, three)
    engine.run([0, 1], max_epochs=1)
    assert calls == [
        ("two", "model_1.pt"),
        ("three", "model_1.pt", 1),
        ("two", "model_2.pt"),
        ("three", "model_2.pt", 2),
    ]
    assert two.last_checkpoint == "model_2.pt"


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"to_save": [1]}, TypeError, "to_save"),
        ({"to_save": {"x": object()}}, TypeError, "state_dict"),
        ({"save_handler": 3}, TypeError, "save_handler"),
        ({"n_saved": 0}, ValueError, "n_saved"),
        ({"save_on_rank": 1}, ValueError, r"save_on_rank must be a rank in \[0, 1\)"),
        (
            {"include_self": True, "to_save": {"checkpointer": nn.Linear(1, 1)}},
            ValueError,
            "checkpointer",
        ),
        ({"to_save": {"__distengine__": nn.Linear(1, 1)}}, ValueError, "reserved"),
        ({"global_step_transform": 3}, TypeError, "global_step_transform"),
    ],
)
def test_invalid_arguments_are_reported(tmp_path, kwargs, error, match):
    args = {"to_save": {"m": nn.Linear(1, 1)}, "save_handler": str(tmp_path)}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        Checkpoint(**args)


def test_score_function_must_return_a_number(tmp_path):
    engine = Engine(lambda e, b: None)
    h = Checkpoint({"m": nn.Linear(1, 1)}, str(tmp_path), score_function=lambda e: "high")
    engine.add_event_handler(Events.ITERATION_COMPLETED, h)
    with pytest.raises(Exception, match="score_function should be a number, got str"):
        engine.run([0], max_epochs=1)
