"""The save decision on its own (``checkpoint.plan``, ``checkpoint.policy``, ``checkpoint.ledger``):
whether a call saves, under which name, what retention drops, and which of two writers in
one directory stops. Pure functions over plain values: no engine run, no storage."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from distengine.checkpoint.catalog import CheckpointEntry, Scan
from distengine.checkpoint.config import CheckpointConfig
from distengine.checkpoint.errors import CheckpointConflictError
from distengine.checkpoint.identity import Identity
from distengine.checkpoint.ledger import SessionLedger
from distengine.checkpoint.manifest import FileEntry, Manifest
from distengine.checkpoint.plan import SavePlan, basename, make_plan
from distengine.checkpoint.policy import Item, rank, should_save, with_new

ME = Identity(run_id="run-a", handler="h1", session="s-me")


def _engine(iteration=0, metrics=None, event="iteration_completed"):
    return SimpleNamespace(
        state=SimpleNamespace(iteration=iteration, metrics=dict(metrics or {})),
        last_event_name=event,
    )


def _plan(config, saved, iteration=0, metrics=None, name="checkpoint", fields=None):
    return make_plan(
        _engine(iteration, metrics),
        config,
        list(saved),
        name=name,
        fields=dict(fields or {}),
        identity=ME,
    )


def _calls(config, steps, name="checkpoint"):
    """Feeds the plans of successive calls into each other, as the writer does."""
    saved, plans = [], []
    for it, metrics in steps:
        plan = _plan(config, saved, it, metrics, name=name)
        plans.append(plan)
        saved = list(plan.saved)
    return plans


# --- policy: ranking and retention ---------------------------------------------------------


def test_nan_ranks_below_every_number():
    priorities = [3.0, float("nan"), -math.inf, -1, 0.5]
    ordered = sorted(priorities, key=rank)
    assert math.isnan(ordered[0])
    assert ordered[1:] == [-math.inf, -1, 0.5, 3.0]


@pytest.mark.parametrize(
    ("saved", "priority", "n_saved", "ge", "expected"),
    [
        ([], 0.0, 1, False, True),  # room
        ([Item(1, "a")], 0.0, 2, False, True),  # still room, even for a worse one
        ([Item(1, "a")], 0.0, 1, False, False),  # full, worse
        ([Item(1, "a")], 1, 1, False, False),  # full, equal, strict
        ([Item(1, "a")], 1, 1, True, True),  # full, equal, greater_or_equal
        ([Item(1, "a")], 2, 1, False, True),  # full, better
        ([Item(1, "a"), Item(5, "b")], 3, 2, False, True),  # beats the lowest kept only
        ([Item(1, "a")], -5, None, False, True),  # n_saved=None: always
        ([Item(float("nan"), "a")], -math.inf, 1, False, True),  # anything beats NaN
        ([Item(0.0, "a")], float("nan"), 1, True, False),  # NaN never beats a number
    ],
)
def test_should_save(saved, priority, n_saved, ge, expected):
    assert should_save(saved, priority, n_saved, ge) is expected


def test_with_new_drops_the_lowest_and_keeps_order():
    saved = [Item(1, "c1"), Item(4, "c4")]
    kept, removed = with_new(saved, Item(2, "c2"), 2)
    assert kept == [Item(2, "c2"), Item(4, "c4")]
    assert removed == ["c1"]
    assert saved == [Item(1, "c1"), Item(4, "c4")]  # the input is not changed


def test_with_new_among_equal_priorities_the_oldest_goes_first():
    kept, removed = with_new([Item(1, "old"), Item(1, "mid")], Item(1, "new"), 2)
    assert [it.filename for it in kept] == ["mid", "new"]
    assert removed == ["old"]


def test_with_new_same_name_replaces_instead_of_removing():
    kept, removed = with_new([Item(1, "fixed.pt"), Item(3, "other.pt")], Item(2, "fixed.pt"), 2)
    assert kept == [Item(2, "fixed.pt"), Item(3, "other.pt")]
    assert removed == []


def test_with_new_unbounded_removes_nothing():
    kept, removed = with_new([Item(i, f"c{i}") for i in range(5)], Item(-1, "low"), None)
    assert len(kept) == 6 and kept[0] == Item(-1, "low")
    assert removed == []


# --- plan: names, retention, metadata ------------------------------------------------------


def test_basename():
    assert basename("best", "model") == "best_model"
    assert basename("", "checkpoint") == "checkpoint"


def test_unscored_plans_are_named_by_iteration_and_keep_the_newest():
    plans = _calls(CheckpointConfig(n_saved=2), [(1, None), (2, None), (3, None)])
    assert [p.filename for p in plans] == ["checkpoint_1.pt", "checkpoint_2.pt", "checkpoint_3.pt"]
    assert all(p.save for p in plans)
    assert [p.remove for p in plans] == [(), (), ("checkpoint_1.pt",)]
    assert plans[-1].saved == (Item(2, "checkpoint_2.pt"), Item(3, "checkpoint_3.pt"))
    assert [p.replaces for p in plans] == [False, False, False]
    assert all(p.identity is ME for p in plans)


def test_scored_plan_names_the_score_and_skips_a_worse_one():
    config = CheckpointConfig(filename_prefix="best", score_name="acc", n_saved=1)
    first, worse, better = _calls(
        config,
        [(10, {"acc": 0.5}), (20, {"acc": 0.25}), (30, {"acc": 0.875})],
        name="model",
    )
    assert first.save and first.filename == "best_model_acc=0.5000.pt"
    assert worse == SavePlan(saved=first.saved, identity=ME)  # nothing to do, kept unchanged
    assert not worse.save and worse.filename == "" and worse.remove == ()
    assert better.filename == "best_model_acc=0.8750.pt"
    assert better.remove == ("best_model_acc=0.5000.pt",)
    assert better.saved == (Item(0.875, "best_model_acc=0.8750.pt"),)


def test_equal_score_saves_only_with_greater_or_equal():
    steps = [(1, {"acc": 0.5}), (2, {"acc": 0.5})]
    strict = _calls(CheckpointConfig(score_name="acc"), steps)
    assert [p.save for p in strict] == [True, False]
    ge = _calls(CheckpointConfig(score_name="acc", greater_or_equal=True), steps)
    assert [p.save for p in ge] == [True, True]
    # the same rendered name: the second replaces the first, nothing is removed
    assert ge[1].replaces and ge[1].remove == ()
    assert ge[1].saved == (Item(0.5, ge[0].filename),)


def test_a_nan_score_is_saved_while_there_is_room_and_goes_first():
    nan, real = _calls(
        CheckpointConfig(score_name="loss"), [(1, {"loss": math.nan}), (2, {"loss": -3.0})]
    )
    assert nan.save and nan.filename == "checkpoint_loss=nan.pt"
    assert real.save and real.remove == ("checkpoint_loss=nan.pt",)


def test_integer_scores_render_without_decimals():
    (plan,) = _calls(CheckpointConfig(score_function=lambda e: 7, score_name="step"), [(1, None)])
    assert plan.filename == "checkpoint_step=7.pt"


def test_global_step_transform_names_the_file_and_ranks_unscored_saves():
    config = CheckpointConfig(
        n_saved=2, global_step_transform=lambda engine, event: 100 - engine.state.iteration
    )
    plans = _calls(config, [(1, None), (2, None), (3, None)])
    assert [p.filename for p in plans] == ["checkpoint_99.pt", "checkpoint_98.pt", ""]
    # a falling step is a falling priority: the third is worse than both kept, not saved
    assert [p.save for p in plans] == [True, True, False]


def test_global_step_transform_sees_the_event():
    seen = []
    config = CheckpointConfig(global_step_transform=lambda e, ev: seen.append(ev) or 5)
    make_plan(_engine(1, event="epoch_completed"), config, [], name="c", fields={}, identity=None)
    assert seen == ["epoch_completed"]


def test_a_fixed_pattern_replaces_the_kept_checkpoint():
    config = CheckpointConfig(filename_pattern="{name}.{ext}", n_saved=1)
    first, second = _calls(config, [(1, None), (2, None)], name="last")
    assert first.filename == second.filename == "last.pt"
    assert (first.replaces, second.replaces) == (False, True)
    assert second.remove == ()  # never delete the name just written
    assert second.saved == (Item(2, "last.pt"),)


def test_unbounded_retention_never_removes():
    plans = _calls(CheckpointConfig(n_saved=None), [(i, None) for i in range(1, 6)])
    assert all(p.save and p.remove == () for p in plans)
    assert len(plans[-1].saved) == 5


def test_plan_metadata_and_manifest_fields():
    config = CheckpointConfig(filename_prefix="best", score_name="acc")
    plan = _plan(config, [], 4, {"acc": 0.75}, name="model", fields={"iteration": 4})
    meta = dict(plan.metadata)
    assert meta == {"basename": "best_model", "score_name": "acc", "priority": 0.75}
    assert dict(plan.fields) == {**meta, "iteration": 4, "filename_prefix": "best"}


def test_score_function_returning_a_non_number_is_refused():
    config = CheckpointConfig(score_function=lambda e: "0.5")
    with pytest.raises(ValueError, match="should be a number, got str"):
        _plan(config, [], 1)


def test_a_pattern_rendering_a_path_is_refused_naming_the_file():
    config = CheckpointConfig(filename_pattern="{name}_{global_step}.{ext}")
    with pytest.raises(ValueError, match=r"Cannot save under 'a/b_1\.pt'"):
        _plan(config, [], 1, name="a/b")


def test_stored_pairs_pass_through_saving_or_not():
    stored = (("checkpoint_1.pt", "checkpoint_1.pt"),)
    config = CheckpointConfig(score_name="acc")
    kw = {"name": "checkpoint", "fields": {}, "identity": ME, "stored": stored}
    saving = make_plan(_engine(1, {"acc": 1.0}), config, [], **kw)
    skipping = make_plan(_engine(2, {"acc": 0.0}), config, list(saving.saved), **kw)
    assert saving.stored == skipping.stored == stored
    assert not skipping.save


# --- ledger: two writers in one directory --------------------------------------------------


def _manifest(name, sequence, *, run_id, handler, session, first, base, basename="checkpoint"):
    return Manifest(
        name=name,
        payload=name,
        files={name: FileEntry(1, "00" * 32)},
        sequence=sequence,
        iteration=sequence,
        run_id=run_id,
        handler=handler,
        session=session,
        session_first=first,
        session_base=base,
        basename=basename,
    )


def _scan(*manifests):
    entries = [CheckpointEntry(f"{m.name}.manifest.json", m) for m in manifests]
    return Scan(
        files={}, entries=entries, max_sequence=max((m.sequence for m in manifests), default=0)
    )


def _started_ledger(scan_before, my_sequence):
    """A ledger after this session's first save (``checkpoint_1.pt``, at ``my_sequence``)."""
    ledger = SessionLedger()
    ledger.start(scan_before, my_sequence)
    mine = _manifest(
        "checkpoint_1.pt",
        my_sequence,
        run_id="run-a",
        handler="h1",
        session="s-me",
        first=my_sequence,
        base=scan_before.max_sequence,
    )
    after = _scan(*(e.manifest for e in scan_before.entries), mine)
    ledger.record(after, ["checkpoint_1.pt.manifest.json"], "checkpoint_1.pt")
    return ledger


def test_ledger_start_is_recorded_once():
    ledger = SessionLedger()
    ledger.start(_scan(), 1)
    ledger.start(
        _scan(_manifest("x", 9, run_id="r", handler="h", session="s", first=9, base=0)), 10
    )
    assert (ledger.first_sequence, ledger.base_sequence) == (1, 0)


def test_ledger_before_the_first_save_checks_nothing():
    other = _manifest(
        "checkpoint_5.pt", 5, run_id="run-b", handler="h1", session="s-b", first=5, base=0
    )
    assert SessionLedger().check(_scan(other), ME, "checkpoint", "/d") == []


def test_ledger_ignores_what_it_saw_its_own_and_other_handlers_or_names():
    ledger = _started_ledger(_scan(), 1)
    sibling = _manifest(
        "best_2.pt",
        2,
        run_id="run-a",
        handler="h2",
        session="s-2",
        first=2,
        base=1,
        basename="best",
    )
    other_names = _manifest(
        "x_3.pt", 3, run_id="run-b", handler="hx", session="s-3", first=3, base=0, basename="x"
    )
    mine_again = _manifest(
        "checkpoint_4.pt", 4, run_id="run-a", handler="h1", session="s-me", first=1, base=0
    )
    assert ledger.check(_scan(sibling, other_names, mine_again), ME, "checkpoint", "/d") == []


def test_ledger_the_writer_that_joined_second_stops():
    # this session saved first (sequence 1, saw nothing); the other joined later and saw it
    ledger = _started_ledger(_scan(), 1)
    late = _manifest(
        "checkpoint_2.pt", 2, run_id="run-b", handler="h1", session="s-late", first=2, base=1
    )
    warnings = ledger.check(_scan(late), ME, "checkpoint", "/d")
    assert len(warnings) == 1 and "another run (run-b, session s-late)" in warnings[0]
    assert "will stop at its next save; this one goes on" in warnings[0]
    assert ledger.check(_scan(late), ME, "checkpoint", "/d") == []  # warned once per session


def test_ledger_stops_this_writer_when_it_joined_second():
    early = _manifest(
        "checkpoint_1.pt", 1, run_id="run-b", handler="h1", session="s-early", first=1, base=0
    )
    ledger = _started_ledger(_scan(early), 2)  # saw the other's checkpoint before starting
    again = _manifest(
        "checkpoint_3.pt", 3, run_id="run-b", handler="h1", session="s-early", first=1, base=0
    )
    with pytest.raises(CheckpointConflictError, match="joined the directory after it") as e:
        ledger.check(_scan(early, again), ME, "checkpoint", "/d")
    assert "another directory or filename_prefix" in str(e.value)


def test_ledger_same_run_and_handler_twice_is_a_duplicate():
    ledger = _started_ledger(_scan(), 1)
    twin = _manifest(
        "checkpoint_2.pt", 2, run_id="run-a", handler="h1", session="s-twin", first=2, base=1
    )
    (warning,) = ledger.check(_scan(twin), ME, "checkpoint", "/d")
    assert "same run (run-a) and handler settings" in warning


def test_ledger_tie_is_broken_by_the_larger_session_id():
    # neither saw the other (both started on an empty directory): the larger session stops
    def started():
        ledger = SessionLedger()
        ledger.start(_scan(), 1)
        ledger.record(_scan(), [], "checkpoint_1.pt")
        return ledger

    other = _manifest(
        "checkpoint_2.pt", 2, run_id="run-b", handler="h1", session="s-zzz", first=2, base=0
    )
    low = Identity("run-a", "h1", "s-aaa")
    assert len(started().check(_scan(other), low, "checkpoint", "/d")) == 1
    high = Identity("run-a", "h1", "s-zzzz")
    with pytest.raises(CheckpointConflictError):
        started().check(_scan(other), high, "checkpoint", "/d")
