"""Whose checkpoints are whose: retention touches only a handler's own checkpoints (of its
run or the run it resumes), a second live run in the directory is stopped, a fresh run in
a directory with old checkpoints saves its own, NaN scores rank last."""

from __future__ import annotations

import math
import os
import threading
import warnings

import pytest
import torch
from proctree import child_context
from torch import nn

from distengine.checkpoint import (
    CheckpointConflictError,
    CheckpointSaveError,
    Storage,
    faults,
    list_checkpoints,
    read_payload,
)
from distengine.engine import Engine, Events
from distengine.handlers.checkpoint import Checkpoint
from distengine.handlers.disk_saver import DiskSaver


def _pt(d) -> list[str]:
    return sorted(f for f in os.listdir(d) if f.endswith(".pt"))


def _counting_step(model):
    def step(engine, batch):
        with torch.no_grad():
            model.weight += 1.0

    return step


def _two_handlers(d: str):
    """The issue's setup: same base name, one n_saved=1 every 7 iterations, one keeping
    every epoch's checkpoint."""
    model = nn.Linear(1, 1, bias=False)
    trainer = Engine(_counting_step(model))
    to_save = {"model": model, "trainer": trainer}
    every7 = Checkpoint(to_save, DiskSaver(d, require_empty=False), n_saved=1)
    per_epoch = Checkpoint(to_save, DiskSaver(d, require_empty=False), n_saved=None)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=7), every7)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, per_epoch)
    return trainer, model


def test_retention_after_a_restart_deletes_only_the_handlers_own_checkpoints(tmp_path):
    d = str(tmp_path)
    data = list(range(5))
    trainer, _ = _two_handlers(d)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=12), lambda e: e.terminate())
    trainer.run(data, max_epochs=4)  # "crashes" at iteration 12
    assert _pt(d) == ["checkpoint_10.pt", "checkpoint_5.pt", "checkpoint_7.pt"]
    # restart: new objects and handlers, resumed from the newest checkpoint (iteration 10)
    trainer2, model2 = _two_handlers(d)
    latest = Checkpoint.latest(d)
    Checkpoint.load_objects({"model": model2, "trainer": trainer2}, latest)
    assert trainer2.state.iteration == 10
    trainer2.run(data, max_epochs=4)
    # every-7 kept only its newest (14, dropping its own 7); per-epoch kept all of its own
    assert _pt(d) == [
        "checkpoint_10.pt",
        "checkpoint_14.pt",
        "checkpoint_15.pt",
        "checkpoint_20.pt",
        "checkpoint_5.pt",
    ]


def test_two_handlers_saving_the_same_name_keep_separate_copies(tmp_path):
    d = str(tmp_path)
    model = nn.Linear(1, 1, bias=False)
    trainer = Engine(_counting_step(model))
    to_save = {"model": model, "trainer": trainer}
    every5 = Checkpoint(to_save, DiskSaver(d, require_empty=False), n_saved=1)
    per_epoch = Checkpoint(to_save, DiskSaver(d, require_empty=False), n_saved=None)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=5), every5)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, per_epoch)
    trainer.run(list(range(5)), max_epochs=3)  # both save "checkpoint_5.pt", "…_10.pt", "…_15.pt"
    names = sorted(e.manifest.name for e in list_checkpoints(Storage(d)))
    assert names == ["checkpoint_10.pt", "checkpoint_15.pt", "checkpoint_15.pt", "checkpoint_5.pt"]
    for e in list_checkpoints(Storage(d)):  # each copy is complete
        step = read_payload(os.path.join(d, e.manifest.payload))["trainer"]["iteration"]
        assert f"checkpoint_{step}.pt" == e.manifest.name
    assert str(every5.last_checkpoint) != str(per_epoch.last_checkpoint)
    assert str(per_epoch.last_checkpoint) == str(Checkpoint.latest(d))


def _job(d: str, n_saved: int | None = 2, attach: bool = True):
    model = nn.Linear(1, 1, bias=False)
    trainer = Engine(_counting_step(model))
    handler = Checkpoint(
        {"model": model, "trainer": trainer}, DiskSaver(d, require_empty=False), n_saved=n_saved
    )
    if attach:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, handler)
    return trainer, model, handler


def test_a_second_live_run_with_the_same_names_is_stopped_and_nothing_is_overwritten(tmp_path):
    d = str(tmp_path)
    a, a_model, a_handler = _job(d)
    b, _, b_handler = _job(d)
    a.run([0], max_epochs=1, seed=1)  # job A saves checkpoint_1.pt
    b.run([0], max_epochs=1, seed=2)  # job B (another run) saves the same name beside it
    assert a.state.run_id != b.state.run_id
    names = sorted((e.manifest.name, e.manifest.run_id) for e in list_checkpoints(Storage(d)))
    assert names == sorted(
        [("checkpoint_1.pt", a.state.run_id), ("checkpoint_1.pt", b.state.run_id)]
    )
    assert read_payload(os.path.join(d, "checkpoint_1.pt"))["trainer"]["run_id"] == a.state.run_id
    # A saves again: B saved since A's last save, but B joined later: A goes on, warned
    with pytest.warns(RuntimeWarning, match=rf"another run \({b.state.run_id}.*will stop"):
        a.run([0], max_epochs=2)
    # B saves again: it sees A alive and is the one that joined second: it stops
    with pytest.raises(CheckpointConflictError) as info:
        b.run([0], max_epochs=2)
    assert d in str(info.value) and a.state.run_id in str(info.value)
    assert "checkpoint_2.pt" not in {
        e.manifest.name for e in list_checkpoints(Storage(d)) if e.manifest.run_id == b.state.run_id
    }
    # every checkpoint either job committed is intact and A's retention went on
    for e in list_checkpoints(Storage(d)):
        read_payload(os.path.join(d, e.manifest.payload))
    latest = Checkpoint.latest(d)
    assert read_payload(latest)["trainer"]["run_id"] == a.state.run_id


def _two_process_job(role: int, d: str, turns, results) -> None:
    """Two jobs saving in turns: A saves, then B, then A … (two barriers per iteration)."""
    first, second = turns
    trainer, _, handler = _job(d, attach=False)

    def wait(barrier) -> None:
        try:
            barrier.wait(timeout=30)
        except threading.BrokenBarrierError:
            pass  # the other job ended: no turns to take any more

    def before(_):
        if role == 1:
            wait(first)

    def after(_):
        if role == 0:
            wait(first)
        wait(second)

    trainer.add_event_handler(Events.ITERATION_COMPLETED, before)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, handler)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, after)
    error = None
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            trainer.run(list(range(4)), max_epochs=1, seed=role)
        except CheckpointSaveError as e:
            error = f"{type(e).__name__}: {e}"
        finally:
            first.abort()
            second.abort()  # the other job no longer waits for this one
    caught = [str(w.message) for w in seen if "another run" in str(w.message)]
    results.put((role, trainer.state.run_id, trainer.state.iteration, error, caught))


@pytest.mark.timeout(120)
def test_two_jobs_in_one_directory_real_processes(tmp_path):
    """Item 3 with two real processes: the job that joined second stops with a clear
    error naming the directory and the other run; the first finishes."""
    d = str(tmp_path)
    ctx = child_context()
    turns = (ctx.Barrier(2), ctx.Barrier(2))
    results = ctx.Queue()
    procs = [ctx.Process(target=_two_process_job, args=(r, d, turns, results)) for r in (0, 1)]
    for p in procs:
        p.start()
    try:
        out = {}
        for _ in procs:
            role, run_id, iteration, error, caught = results.get(timeout=90)
            out[role] = (run_id, iteration, error, caught)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    (a_run, a_iter, a_error, a_warned), (b_run, b_iter, b_error, _) = out[0], out[1]
    assert a_error is None and a_iter == 4
    assert b_error is not None and b_error.startswith("CheckpointConflictError")
    assert d in b_error and a_run in b_error and b_iter == 2
    assert any(b_run in w for w in a_warned)
    kept = sorted((e.manifest.name, e.manifest.run_id) for e in list_checkpoints(Storage(d)))
    assert kept == sorted(
        [("checkpoint_3.pt", a_run), ("checkpoint_4.pt", a_run), ("checkpoint_1.pt", b_run)]
    )


def test_a_fresh_run_in_a_directory_with_old_checkpoints_saves_its_own(tmp_path):
    d = str(tmp_path)
    old = Engine(lambda e, b: None)
    old_handler = Checkpoint(
        {"trainer": old}, DiskSaver(d, require_empty=False), n_saved=2
    )  # the earlier run: checkpoints 90 and 100
    old.add_event_handler(Events.ITERATION_COMPLETED(every=10), old_handler)
    old.run(list(range(10)), max_epochs=10)
    assert _pt(d) == ["trainer_100.pt", "trainer_90.pt"]
    saved = []
    new = Engine(lambda e, b: None)
    handler = Checkpoint({"trainer": new}, DiskSaver(d, require_empty=False), n_saved=2)
    handler.attach(new, Events.ITERATION_COMPLETED(every=10))
    new.add_event_handler(Checkpoint.SAVED_CHECKPOINT, lambda e: saved.append(e.state.iteration))
    new.run(list(range(10)), max_epochs=7)
    assert saved == [10, 20, 30, 40, 50, 60, 70]  # all 7 written
    # its own retention (keeps 60 and 70); the old run's checkpoints are left alone
    assert _pt(d) == ["trainer_100.pt", "trainer_60.pt", "trainer_70.pt", "trainer_90.pt"]
    # latest: the newest saved in the directory, whichever run (documented)
    assert str(Checkpoint.latest(d)).endswith("trainer_70.pt")


def test_the_same_handler_starts_a_new_retention_when_its_trainer_starts_a_new_run(tmp_path):
    d = str(tmp_path)
    trainer = Engine(lambda e, b: None)
    handler = Checkpoint({"trainer": trainer}, DiskSaver(d, require_empty=False), n_saved=1)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, handler)
    trainer.run([0, 1, 2], max_epochs=2)  # keeps trainer_6.pt
    trainer.state.max_epochs = None  # the next run() starts a new run (Ignite's way)
    trainer.run([0, 1, 2], max_epochs=1)  # saves 1, 2, 3 and keeps 3
    assert _pt(d) == ["trainer_3.pt", "trainer_6.pt"]


SCORES = [0.5, math.nan, 0.7, 0.9, 0.3, 0.8]


def _scored(d: str, scores):
    it = iter(scores)
    trainer = Engine(lambda e, b: None)
    handler = Checkpoint(
        {"model": nn.Linear(1, 1), "trainer": trainer},
        DiskSaver(d, require_empty=False),
        score_function=lambda e: next(it),
        score_name="acc",
        n_saved=2,
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, handler)
    return trainer, handler


def test_a_nan_score_ranks_below_every_number_and_never_blocks_later_saves(tmp_path):
    d = str(tmp_path)
    trainer, handler = _scored(d, SCORES[:2])
    trainer.run([0, 1], max_epochs=1)  # 0.5 and NaN: room for both
    saved = handler.state_dict()["_saved"]
    assert saved[1][0] == 0.5 and math.isnan(saved[0][0])
    assert _pt(d) == ["checkpoint_acc=0.5000.pt", "checkpoint_acc=nan.pt"]
    # the run restarts (retention rebuilt from the manifests, NaN included) and goes on
    trainer2, handler2 = _scored(d, SCORES[2:])
    Checkpoint.load_objects({"trainer": trainer2}, Checkpoint.latest(d), strict=False)
    trainer2.run([0, 1], max_epochs=3)
    assert [p for p, _ in handler2.state_dict()["_saved"]] == [0.8, 0.9]
    assert _pt(d) == ["checkpoint_acc=0.8000.pt", "checkpoint_acc=0.9000.pt"]


def test_constructor_refuses_settings_that_cannot_work(tmp_path):
    m = {"m": nn.Linear(1, 1)}
    with pytest.raises(ValueError, match="unknown field 'epoch'") as info:
        Checkpoint(m, str(tmp_path), filename_pattern="{name}_{epoch}.{ext}")
    assert isinstance(info.value, KeyError)  # as Ignite raises at the first save
    with pytest.raises(ValueError, match="filename_pattern .* gives bad names"):
        Checkpoint(m, str(tmp_path), filename_pattern="{name}/{global_step}.{ext}")
    with pytest.raises(ValueError, match="filename_prefix must not contain '/'"):
        Checkpoint(m, str(tmp_path), filename_prefix="runs/a")
    with pytest.raises(ValueError, match="`to_save` is empty"):
        Checkpoint({}, str(tmp_path))
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        DiskSaver(str(afile))
    with pytest.raises(ValueError, match="is a file"):
        Checkpoint(m, str(afile))
    assert os.listdir(tmp_path) == ["afile"]  # nothing was created


def test_latest_warns_when_no_checkpoint_holds_an_engine(tmp_path):
    d = str(tmp_path)
    h = Checkpoint({"model": nn.Linear(1, 1)}, d)
    h(Engine(lambda e, b: None))
    with pytest.warns(RuntimeWarning, match="none holds an Engine"):
        assert Checkpoint.latest(d) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Checkpoint.latest(str(tmp_path / "empty")) is None  # nothing there: no warning


def test_a_stalled_local_write_fails_in_bounded_time_naming_the_file(tmp_path, monkeypatch):
    block = threading.Event()
    engine = Engine(lambda e, b: None)
    handler = Checkpoint({"trainer": engine}, DiskSaver(str(tmp_path), io_timeout=0.5))
    engine.add_event_handler(Events.ITERATION_COMPLETED, handler)
    faults.set_fault_hook(lambda phase: block.wait(30) if phase == "payload_partial" else None)
    try:
        with pytest.raises(CheckpointSaveError, match=r"trainer_1\.pt: no progress for 0.5 s"):
            engine.run([0], max_epochs=1)
    finally:
        block.set()
        faults.set_fault_hook(None)
    monkeypatch.setenv("DISTENGINE_STORAGE_TIMEOUT", "-1")
    with pytest.raises(ValueError, match="DISTENGINE_STORAGE_TIMEOUT"):
        DiskSaver(str(tmp_path / "x"))
