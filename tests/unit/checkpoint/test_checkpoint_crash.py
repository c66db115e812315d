"""A crash at any point of any save leaves the previous checkpoint loadable and returned by
``latest``, whatever the file names; the next save removes what the crash left.

Each case runs a trainer in a forked process that ``DISTENGINE_FAULT_INJECT`` kills
(SIGKILL) at one phase of its second save, on a local disk and on S3 (the moto server),
with distinct names, a fixed name (``{name}_last.{ext}``) and scores that format alike
(0.910001 and 0.910002 both give ``checkpoint_acc=0.9100.pt``).
"""

from __future__ import annotations

import os

import pytest
import torch
from proctree import child_context
from torch import nn

from distengine.checkpoint import Storage, faults, list_checkpoints
from distengine.engine import Engine, Events
from distengine.handlers.checkpoint import Checkpoint
from distengine.handlers.disk_saver import DiskSaver

NAMINGS = {
    "distinct": {"n_saved": 2},
    "fixed": {"filename_pattern": "{name}_last.{ext}"},
    "same-score": {
        "score_function": lambda e: 0.91 + e.state.iteration * 1e-6,
        "score_name": "acc",
    },
}
FINAL = {  # what a finished 4-iteration run leaves
    "distinct": ["checkpoint_3.pt", "checkpoint_4.pt"],
    "fixed": ["checkpoint_last.pt"],
    "same-score": ["checkpoint_acc=0.9100.pt"],
}
PRE_COMMIT = ("payload_partial", "before_commit", "before_manifest", "manifest_partial")
PROMOTION = ("before_promote", "promote_partial", "after_promote")
CASES = (
    [("distinct", p) for p in (*PRE_COMMIT, "before_cleanup")]
    + [("fixed", p) for p in faults.PHASES]
    + [("same-score", p) for p in ("before_manifest", "manifest_partial", *PROMOTION)]
)


def _trainer(url: str, options: dict, naming: str):
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.zero_()

    def step(engine, batch):
        with torch.no_grad():
            model.weight += 1.0  # the weight records the iteration it was saved at

    engine = Engine(step)
    handler = Checkpoint(
        {"model": model, "trainer": engine},
        DiskSaver(url, require_empty=False, **options),
        **NAMINGS[naming],
    )
    engine.add_event_handler(Events.ITERATION_COMPLETED, handler)
    return engine, model


def _child(url: str, options: dict, naming: str, phase: str) -> None:
    # the first save succeeds (it has no promotion: its name was free)
    os.environ[faults.FAULT_INJECT_ENV] = f"{phase}:{1 if phase in PROMOTION else 2}"
    faults.reset_fault_counts()
    engine, _ = _trainer(url, options, naming)
    engine.run(list(range(4)), max_epochs=1)


def _killed_during_second_save(url: str, options: dict, naming: str, phase: str) -> None:
    proc = child_context().Process(target=_child, args=(url, options, naming, phase))
    proc.start()
    proc.join(timeout=60)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout=10)
        raise AssertionError("the child did not finish within 60 s")
    assert proc.exitcode == -9, f"the fault did not fire (exit code {proc.exitcode})"


def _check_crash_and_resume(url: str, options: dict, naming: str, phase: str) -> None:
    _killed_during_second_save(url, options, naming, phase)
    # The second checkpoint exists only if the kill came after its manifest was committed.
    saved_at = 1 if phase in PRE_COMMIT else 2
    latest = Checkpoint.latest(url, **options)
    assert latest is not None
    engine, model = _trainer(url, options, naming)
    Checkpoint.load_objects({"model": model, "trainer": engine}, latest, **options)
    assert engine.state.iteration == saved_at and model.weight[0, 0].item() == saved_at
    # The restarted job resumes, removes what the killed save left, and keeps pruning.
    engine.run(list(range(4)), max_epochs=1)
    files = sorted(Storage(url, **options).list_files())
    assert files == sorted(FINAL[naming] + [f + ".manifest.json" for f in FINAL[naming]])
    latest = Checkpoint.latest(url, **options)
    engine2, model2 = _trainer(url, options, naming)
    Checkpoint.load_objects({"model": model2, "trainer": engine2}, latest, **options)
    assert engine2.state.iteration == 4 and model2.weight[0, 0].item() == 4.0


@pytest.fixture(autouse=True)
def _clean_faults(monkeypatch):
    monkeypatch.delenv(faults.FAULT_INJECT_ENV, raising=False)
    faults.reset_fault_counts()
    yield
    faults.reset_fault_counts()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("naming, phase", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_sigkill_at_any_phase_keeps_a_valid_checkpoint_local(tmp_path, naming, phase):
    _check_crash_and_resume(str(tmp_path / "ckpt"), {}, naming, phase)


S3_CASES = [("fixed", p) for p in faults.PHASES] + [("same-score", "manifest_partial")]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("naming, phase", S3_CASES, ids=[f"{n}-{p}" for n, p in S3_CASES])
def test_sigkill_at_any_phase_keeps_a_valid_checkpoint_s3(s3_server, naming, phase):
    _check_crash_and_resume(s3_server.url("crash"), s3_server.storage_options, naming, phase)


def test_a_name_in_use_is_never_overwritten_before_the_new_commit(tmp_path):
    """The mechanism: while the second save of a fixed name runs, the first one's files
    are untouched (the new payload goes to a unique name until it is committed)."""
    d = str(tmp_path)
    seen: list[tuple[str, list[str]]] = []

    def look(phase: str) -> None:
        if phase in ("before_manifest", "before_promote"):
            seen.append((phase, [e.manifest.payload for e in list_checkpoints(Storage(d))]))

    engine, _ = _trainer(d, {}, "fixed")
    faults.set_fault_hook(look)
    try:
        engine.run(list(range(2)), max_epochs=1)
    finally:
        faults.set_fault_hook(None)
    (_, first), (_, second), (_, third) = seen
    assert first == []  # first save: nothing before its manifest
    assert second == ["checkpoint_last.pt"]  # second: the first checkpoint is intact
    assert (
        len(third) == 1
        and third[0].startswith("checkpoint_last.")
        and third[0] != "checkpoint_last.pt"
    )
