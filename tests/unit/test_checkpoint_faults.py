"""Crashes during a save (real SIGKILL at each writer phase) and background (async) saves."""

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


def _child_saves_until_killed(d: str, phase: str) -> None:
    os.environ[faults.FAULT_INJECT_ENV] = f"{phase}:2"  # the first save succeeds
    faults.reset_fault_counts()
    engine, _, _, data = _trainer(d, 4, n_saved=2)
    engine.run(data, max_epochs=1)


LEFT_BEHIND = {
    "payload_partial": [".checkpoint_2.pt"],  # an unfinished temporary file
    "before_commit": [".checkpoint_2.pt"],  # a complete one, never renamed
    "before_manifest": ["checkpoint_2.pt"],  # an orphan payload
    "manifest_partial": [".checkpoint_2.manifest.json", "checkpoint_2.pt"],
    "before_cleanup": ["checkpoint_2.manifest.json", "checkpoint_2.pt"],  # a whole checkpoint
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("phase", faults.PHASES)
def test_sigkill_during_a_save_leaves_the_previous_checkpoint_usable(tmp_path, phase):
    d = str(tmp_path)
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 3
        try:
            _child_saves_until_killed(d, phase)
        except BaseException:
            code = 4
        finally:
            os._exit(code)
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)  # only if the wait was interrupted
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        f"fault did not fire: {status}"
    )
    # What the killed writer left of its second checkpoint shows where it was killed.
    left = sorted(f.split(".tmp-")[0] for f in os.listdir(d) if "_2." in f)
    assert left == LEFT_BEHIND[phase]
    # The second checkpoint exists only if the kill came after its manifest was committed.
    saved_at = 2 if phase == "before_cleanup" else 1
    latest = Checkpoint.latest(d)
    assert latest is not None and latest.endswith(f"checkpoint_{saved_at}.pt")
    engine, model, handler, data = _trainer(d, 4, n_saved=2)
    Checkpoint.load_objects({"model": model, "trainer": engine}, latest)
    assert engine.state.iteration == saved_at and model.weight[0, 0].item() == saved_at
    # The restarted job resumes, sweeps what the killed writer left, and keeps pruning.
    engine.run(data, max_epochs=1)
    assert sorted(f for f in os.listdir(d) if ".tmp-" in f) == []
    assert sorted(os.listdir(d)) == [
        "checkpoint_3.manifest.json",
        "checkpoint_3.pt",
        "checkpoint_4.manifest.json",
        "checkpoint_4.pt",
    ]


class GatedSaver(DiskSaver):
    """A DiskSaver whose writes wait for a gate, so a test controls when they happen."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.gate.set()
        self.writer_threads: list[str] = []

    def __call__(self, checkpoint, filename, metadata=None):
        assert self.gate.wait(timeout=30), "gate never opened"
        self.writer_threads.append(threading.current_thread().name)
        super().__call__(checkpoint, filename, metadata)


def test_async_save_captures_state_at_the_call(tmp_path):
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    engine = Engine(lambda e, b: None)
    saver = GatedSaver(str(tmp_path))
    handler = Checkpoint({"model": model}, saver, async_save=True)
    saver.gate.clear()  # hold the background write until the model has changed
    handler(engine)
    with torch.no_grad():
        model.weight.add_(5.0)  # a training step after the call
    saver.gate.set()
    handler.wait()
    saved = torch.load(handler.last_checkpoint, weights_only=True)
    assert torch.equal(saved["weight"], torch.ones(2, 2))
    assert saver.writer_threads == ["distengine-ckpt-writer"]


def test_background_failure_surfaces_on_next_call_and_keeps_earlier_checkpoints(
    tmp_path, monkeypatch
):
    monkeypatch.setenv(faults.FAULT_INJECT_ENV, "payload_partial:2:raise")
    engine, model, handler, _ = _trainer(str(tmp_path), 3, n_saved=1, async_save=True)
    engine.state.iteration = 1
    handler(engine)  # write 1: fine
    engine.state.iteration = 2
    handler(engine)  # write 2: fails in the background; the call itself returns
    assert handler.last_checkpoint.endswith("checkpoint_2.pt")
    engine.state.iteration = 3
    with pytest.raises(
        CheckpointSaveError, match="previous background save failed.*payload_partial"
    ):
        handler(engine)
    assert handler.last_checkpoint.endswith("checkpoint_1.pt")  # the list is rolled back
    assert Checkpoint.latest(str(tmp_path)).endswith("checkpoint_1.pt")
    handler(engine)  # the error was reported once; saving works again
    handler.wait()
    assert Checkpoint.latest(str(tmp_path)).endswith("checkpoint_3.pt")
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_3.manifest.json", "checkpoint_3.pt"]


def test_end_of_run_waits_and_reports_background_failure(tmp_path, monkeypatch):
    engine, _, handler, data = _trainer(str(tmp_path), 3, n_saved=2, async_save=True)
    engine.run(data, max_epochs=1)
    assert not handler._writer.busy  # COMPLETED waited for the last write
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
    assert not handler._writer.busy
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
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_3.manifest.json", "checkpoint_3.pt"]
    engine2, model2, _, _ = _trainer(str(tmp_path), 10)
    Checkpoint.load_objects({"model": model2, "trainer": engine2}, Checkpoint.latest(str(tmp_path)))
    assert engine2.state.iteration == 3 and model2.weight[0, 0].item() == 3.0
