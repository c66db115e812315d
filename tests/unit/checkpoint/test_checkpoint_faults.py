"""Background (async) saves: state captured at the call, failures reported on the next call,
the end of the run waits; preemption saves. (Crashes at each phase: test_checkpoint_crash.py.)"""

from __future__ import annotations

import os
import signal
import threading

import pytest
import torch
from torch import nn

from distengine.checkpoint import CheckpointSaveError, faults
from distengine.engine import Engine, Events
from distengine.handlers.checkpoint import Checkpoint
from distengine.handlers.disk_saver import DiskSaver


@pytest.fixture(autouse=True)
def _clean_faults(monkeypatch):
    monkeypatch.delenv(faults.FAULT_INJECT_ENV, raising=False)
    faults.reset_fault_counts()
    yield
    faults.reset_fault_counts()


def _trainer(d: str, n_iters: int, **kwargs):
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.zero_()

    def step(engine, batch):
        with torch.no_grad():
            model.weight += 1.0  # the weight records the iteration it was saved at

    engine = Engine(step)
    handler = Checkpoint(
        {"model": model, "trainer": engine}, DiskSaver(d, require_empty=False), **kwargs
    )
    engine.add_event_handler(Events.ITERATION_COMPLETED, handler)
    return engine, model, handler, list(range(n_iters))


def test_async_save_captures_state_at_the_call(tmp_path):
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    engine = Engine(lambda e, b: None)
    handler = Checkpoint({"model": model}, DiskSaver(str(tmp_path)), async_save=True)
    gate = threading.Event()
    writers: list[str] = []

    def hold(phase: str) -> None:  # the background write waits until the model changed
        if phase == "payload_partial":
            writers.append(threading.current_thread().name)
            assert gate.wait(timeout=30), "gate never opened"

    faults.set_fault_hook(hold)
    try:
        assert not handler.writing
        handler(engine)
        assert handler.writing  # held at the gate: the save returned, the write goes on
        with torch.no_grad():
            model.weight.add_(5.0)  # a training step after the call
        gate.set()
        handler.wait()
        assert not handler.writing
    finally:
        faults.set_fault_hook(None)
    saved = torch.load(handler.last_checkpoint, weights_only=True)
    assert torch.equal(saved["weight"], torch.ones(2, 2))
    assert len(writers) == 1 and writers[0] != threading.main_thread().name


def test_background_failure_surfaces_on_next_call_and_keeps_earlier_checkpoints(
    tmp_path, monkeypatch
):
    monkeypatch.setenv(faults.FAULT_INJECT_ENV, "payload_partial:2:raise")
    engine, model, handler, _ = _trainer(str(tmp_path), 3, n_saved=1, async_save=True)
    engine.state.iteration = 1
    handler(engine)  # write 1: fine
    engine.state.iteration = 2
    handler(engine)  # write 2: fails in the background; the call itself returns
    assert str(handler.last_checkpoint).endswith("checkpoint_2.pt")
    engine.state.iteration = 3
    with pytest.raises(
        CheckpointSaveError, match="previous background save failed.*payload_partial"
    ):
        handler(engine)
    assert str(handler.last_checkpoint).endswith("checkpoint_1.pt")  # the list is rolled back
    assert Checkpoint.latest(str(tmp_path)).endswith("checkpoint_1.pt")
    handler(engine)  # the error was reported once; saving works again
    handler.wait()
    assert Checkpoint.latest(str(tmp_path)).endswith("checkpoint_3.pt")
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_3.pt", "checkpoint_3.pt.manifest.json"]


def test_end_of_run_waits_and_reports_background_failure(tmp_path, monkeypatch):
    engine, _, handler, data = _trainer(str(tmp_path), 3, n_saved=2, async_save=True)
    engine.run(data, max_epochs=1)
    assert not handler.writing  # COMPLETED waited for the last write
    assert Checkpoint.latest(str(tmp_path)).endswith("checkpoint_3.pt")
    monkeypatch.setenv(faults.FAULT_INJECT_ENV, "before_manifest:3:raise")
    engine2, _, _, data2 = _trainer(str(tmp_path / "b"), 3, n_saved=2, async_save=True)
    with pytest.raises(CheckpointSaveError, match="background save failed.*before_manifest"):
        engine2.run(data2, max_epochs=1)


def test_exception_in_training_still_raises_and_finishes_the_write(tmp_path):
    engine, model, handler, data = _trainer(str(tmp_path), 5, async_save=True)

    @engine.on(Events.ITERATION_COMPLETED(once=2))
    def boom(_):
        raise RuntimeError("training failed")

    with pytest.raises(RuntimeError, match="training failed"):
        engine.run(data, max_epochs=1)
    assert not handler.writing
    assert Checkpoint.latest(str(tmp_path)).endswith("checkpoint_2.pt")


@pytest.mark.parametrize("async_save", [False, True])
def test_preemption_signal_saves_the_stopping_iteration(tmp_path, async_save):
    from distengine.engine.preemption import Preempted

    engine, model, handler, data = _trainer(str(tmp_path), 10, n_saved=2, async_save=async_save)
    engine.remove_event_handler(handler, Events.ITERATION_COMPLETED)
    engine.add_event_handler(Events.ITERATION_COMPLETED(every=5), handler)

    @engine.on(Events.ITERATION_COMPLETED(once=3))
    def preempt(_):
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted):
        engine.run(data, max_epochs=1)
    assert engine.state.iteration == 3
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_3.pt", "checkpoint_3.pt.manifest.json"]
    engine2, model2, _, _ = _trainer(str(tmp_path), 10)
    Checkpoint.load_objects({"model": model2, "trainer": engine2}, Checkpoint.latest(str(tmp_path)))
    assert engine2.state.iteration == 3 and model2.weight[0, 0].item() == 3.0
