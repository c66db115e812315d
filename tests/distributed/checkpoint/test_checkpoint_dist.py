"""Checkpoint as a collective on 2 gloo ranks (contract 6).

One spawned job covers saving and loading (a launch costs seconds here); a second one
calls the handler on one rank only. Each rank writes what it saw to ``rank{r}.json``;
the assertions run in the test process.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time

import pytest
import torch
from torch import nn

import distengine.distributed as idist
from distengine.checkpoint import (
    CheckpointCollectiveError,
    CheckpointConflictError,
    CheckpointSaveError,
    Storage,
    faults,
    list_checkpoints,
)
from distengine.engine import Engine, Events
from distengine.handlers.checkpoint import Checkpoint
from distengine.handlers.disk_saver import DiskSaver


class RankProbe:
    """Per-rank state only: which rank it belongs to."""

    def __init__(self, value: int):
        self.value = value

    def rank_state_dict(self):
        return {"value": self.value}

    def load_rank_state_dict(self, sd):
        self.value = sd["value"]


def _objects(rank: int):
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    torch.manual_seed(100 + rank)  # each rank's RNG stream differs

    def step(engine, batch):
        with torch.no_grad():
            model.weight += 1.0
        torch.rand(1)

    engine = Engine(step)
    return model, engine, RankProbe(10 * rank)


def _expect_error(fn, error_type) -> str:
    try:
        fn()
    except error_type as e:
        return str(e)
    raise AssertionError(f"expected {error_type.__name__}")


def _fail_on(rank: int, writer: int, spec: str) -> None:
    faults.reset_fault_counts()
    if rank == writer:
        os.environ[faults.FAULT_INJECT_ENV] = spec
    else:
        os.environ.pop(faults.FAULT_INJECT_ENV, None)


def _save_load_job(local_rank: int, d: str, out: str) -> None:
    rank, writer = idist.get_rank(), 1
    phases: list[str] = []
    faults.set_fault_hook(phases.append)
    model, engine, probe = _objects(rank)
    to_save = {"model": model, "trainer": engine, "probe": probe}
    handler = Checkpoint(to_save, DiskSaver(d, require_empty=False), n_saved=2, save_on_rank=writer)
    engine.add_event_handler(Events.ITERATION_COMPLETED, handler)
    engine.run([0, 1], max_epochs=1)
    record = {
        "phases": phases[:],
        "saved": [list(i) for i in handler.state_dict()["_saved"]],
        "last": str(handler.last_checkpoint),
    }

    # A failing write on the writer raises on every rank; earlier checkpoints stay.
    _fail_on(rank, writer, "payload_partial:1:raise")
    engine.state.iteration = 3
    record["sync_error"] = _expect_error(lambda: handler(engine), CheckpointSaveError)
    record["saved_after_error"] = [list(i) for i in handler.state_dict()["_saved"]]
    record["latest"] = Checkpoint.latest(d)

    # A failing background write is reported by the next call, on every rank.
    _fail_on(rank, writer, "before_manifest:1:raise")
    async_handler = Checkpoint(
        {"model": model}, DiskSaver(os.path.join(d, "async")), async_save=True, save_on_rank=writer
    )
    async_handler(engine)
    record["async_error"] = _expect_error(lambda: async_handler(engine), CheckpointSaveError)
    os.environ.pop(faults.FAULT_INJECT_ENV, None)

    # Load on each rank: global state from the writer, this rank's own per-rank entry.
    model2, engine2, probe2 = _objects(rank + 7)
    Checkpoint.load_objects(
        {"model": model2, "trainer": engine2, "probe": probe2}, record["latest"]
    )
    record["loaded"] = {
        "iteration": engine2.state.iteration,
        "probe": probe2.value,
        "weight": model2.weight[0, 0].item(),
    }
    faults.set_fault_hook(None)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)


@pytest.mark.timeout(120)
def test_save_is_collective_writer_only_and_agreed(tmp_path):
    d, out = tmp_path / "ckpt", tmp_path / "out"
    d.mkdir()
    out.mkdir()
    idist.spawn(_save_load_job, 2, backend="gloo", args=(str(d), str(out)))
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    # only save_on_rank=1 reached the writer's phases
    # a save under a free name goes through the phases up to before_cleanup (no promotion)
    assert r0["phases"] == [] and r1["phases"] == list(faults.PHASES[:5]) * 2
    # every rank holds the same view of what was saved and got the same answers
    for key in ("saved", "last", "sync_error", "saved_after_error", "latest", "async_error"):
        assert r0[key] == r1[key], key
    assert [f for _, f in r0["saved"]] == ["checkpoint_1.pt", "checkpoint_2.pt"]
    assert "checkpoint_3.pt" in r0["sync_error"] and "on rank 1" in r0["sync_error"]
    assert r0["saved_after_error"] == r0["saved"]
    assert r0["latest"] == str(d / "checkpoint_2.pt")
    assert (
        "previous background save failed" in r0["async_error"]
        and "before_manifest" in r0["async_error"]
    )
    # per-rank state was gathered to the writer as a list indexed by rank
    payload = torch.load(r0["latest"], weights_only=True)
    ranks = payload["__distengine__"]["rank_states"]
    assert payload["__distengine__"]["world_size"] == 2
    assert [s["value"] for s in ranks["probe"]] == [0, 10]
    rng0, rng1 = (ranks["trainer"][r]["rng"]["torch"] for r in (0, 1))
    assert not torch.equal(rng0, rng1)
    # ...and each rank loaded its own entry, plus the writer's global state
    assert r0["loaded"] == {"iteration": 2, "probe": 0, "weight": r1["loaded"]["weight"]}
    assert r1["loaded"]["probe"] == 10 and r1["loaded"]["iteration"] == 2


def _lone_rank_job(local_rank: int, d: str, out: str, done) -> None:
    rank = idist.get_rank()
    model, engine, _ = _objects(rank)
    handler = Checkpoint({"model": model}, DiskSaver(d, require_empty=False))
    if rank == 0:
        start = time.monotonic()
        message = _expect_error(lambda: handler(engine), CheckpointCollectiveError)
        with open(os.path.join(out, "rank0.json"), "w") as f:
            json.dump({"message": message, "elapsed": time.monotonic() - start}, f)
        done.set()
    else:
        assert done.wait(timeout=60), "rank 0 never reported"


@pytest.mark.timeout(120)
def test_call_on_one_rank_alone_raises_a_clear_error_in_bounded_time(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTENGINE_CHECKPOINT_TIMEOUT", "2")
    out = tmp_path / "out"
    out.mkdir()
    done = multiprocessing.get_context("spawn").Event()
    idist.spawn(_lone_rank_job, 2, backend="gloo", args=(str(tmp_path), str(out), done))
    result = json.loads((out / "rank0.json").read_text())
    assert "call 'save' on every rank" in result["message"] and "rank 0 of 2" in result["message"]
    assert 2.0 <= result["elapsed"] < 15.0
    assert os.listdir(tmp_path) == ["out"]  # nothing was written


def _handlers(d: str, model, engine, writer: int):
    to_save = {"model": model, "trainer": engine}
    last = Checkpoint(
        to_save,
        DiskSaver(d, require_empty=False),
        filename_pattern="{name}_last.{ext}",
        save_on_rank=writer,
    )
    every2 = Checkpoint(to_save, DiskSaver(d, require_empty=False), n_saved=2, save_on_rank=writer)
    engine.add_event_handler(Events.ITERATION_COMPLETED, last)
    engine.add_event_handler(Events.ITERATION_COMPLETED(every=2), every2)
    return last, every2


def _identity_job(local_rank: int, d: str, resume: bool) -> dict:
    rank, world = idist.get_rank(), idist.get_world_size()
    model, engine, _ = _objects(rank)
    last, every2 = _handlers(d, model, engine, writer=world - 1)
    if resume:
        latest = Checkpoint.latest(d)
        Checkpoint.load_objects({"model": model, "trainer": engine}, latest)
    else:
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=4), lambda e: e.terminate())
    engine.run(list(range(4)), max_epochs=2, seed=3)
    out = {"run_id": engine.state.run_id, "iteration": engine.state.iteration}
    if resume:
        # two handlers with identical settings in one directory: the second is stopped
        twin_a = Checkpoint({"trainer": engine}, DiskSaver(d, require_empty=False), n_saved=None)
        twin_b = Checkpoint({"trainer": engine}, DiskSaver(d, require_empty=False), n_saved=None)
        errors = []
        for step, handler in [(20, twin_a), (21, twin_b), (22, twin_a), (23, twin_b)]:
            engine.state.iteration = step
            try:
                handler(engine)
            except CheckpointConflictError as e:
                errors.append((step, type(e).__name__, str(e)))
        out["twin_errors"] = errors
    return out


@pytest.mark.timeout(180)
def test_fixed_names_and_retention_follow_the_run_across_world_sizes(tmp_path):
    """World size 3 saves (a fixed name and every 2 iterations) and stops at iteration 4;
    the run resumes at world size 2: same run, same retention, no duplicate or stray file."""
    d = str(tmp_path)
    first = idist.spawn(_identity_job, 3, backend="gloo", args=(d, False))
    assert {r["iteration"] for r in first} == {4} and len({r["run_id"] for r in first}) == 1
    second = idist.spawn(_identity_job, 2, backend="gloo", args=(d, True))
    assert {r["run_id"] for r in second} == {first[0]["run_id"]}
    assert {r["iteration"] for r in second} == {8}
    names = sorted(e.manifest.name for e in list_checkpoints(Storage(d)))
    assert names == [
        "checkpoint_6.pt",
        "checkpoint_8.pt",
        "checkpoint_last.pt",
        "trainer_20.pt",
        "trainer_21.pt",
        "trainer_22.pt",
    ]
    files = sorted(os.listdir(d))
    assert files == sorted(names + [n + ".manifest.json" for n in names])
    last = torch.load(os.path.join(d, "checkpoint_last.pt"), weights_only=True)
    assert last["trainer"]["iteration"] == 8 and last["__distengine__"]["world_size"] == 2
    # the twin that joined second stopped, with the same error on every rank
    for r in second:
        ((step, kind, message),) = r["twin_errors"]
        assert step == 23 and kind == "CheckpointConflictError"
        assert d in message and "identical settings" in message
