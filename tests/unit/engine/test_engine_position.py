"""A saved engine state is a position: load it, run, and the run continues at the next batch,
whatever stopped it (one process; the two-rank version is
tests/distributed/engine/test_engine_position_dist.py)."""

import copy

import pytest
import torch

from distengine.distributed import auto_dataloader
from distengine.engine import Engine, Events
from distengine.engine.preemption import Preempted

DS = torch.utils.data.TensorDataset(torch.arange(40))  # 40 samples, batch 4: 10 iterations/epoch


def _trace_engine(stop=None):
    """An engine that records (epoch, iteration, sample indices) of every processed batch."""
    seen = []

    def step(engine, batch):
        rows = batch[0].tolist() if isinstance(batch, (list, tuple)) else batch
        seen.append((engine.state.epoch, engine.state.iteration, rows))

    eng = Engine(step)
    if stop is not None:
        event, action = stop
        eng.add_event_handler(event, action)
    return eng, seen


def _reference():
    eng, seen = _trace_engine()
    eng.run(auto_dataloader(DS, batch_size=4), max_epochs=2, seed=3)
    return seen


def _resume(sd, **run_kwargs):
    eng, seen = _trace_engine()
    eng.load_state_dict(copy.deepcopy(sd))
    state = eng.run(auto_dataloader(DS, batch_size=4), **run_kwargs)
    return state, seen


@pytest.mark.parametrize("stop_at", [3, 10, 17, 20])
def test_resume_after_terminate_continues_at_the_next_batch(stop_at):
    ref = _reference()
    eng, seen = _trace_engine((Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate()))
    eng.run(auto_dataloader(DS, batch_size=4), max_epochs=2, seed=3)
    assert seen == ref[:stop_at]
    sd = eng.state_dict()
    assert sd["iteration"] == stop_at
    state, resumed = _resume(sd)
    # the rest of the run, batch for batch: neither a skipped nor a restarted epoch
    assert seen + resumed == ref
    assert (state.epoch, state.iteration) == (2, 20)


def test_run_again_after_terminate_in_process_follows_ignite():
    eng, seen = _trace_engine((Events.ITERATION_COMPLETED(once=3), lambda e: e.terminate()))
    data = auto_dataloader(DS, batch_size=4)
    eng.run(data, max_epochs=3, seed=3)
    eng.run(data)  # Ignite's documented rule: the next epoch, on a new data pass
    assert [(ep, it) for ep, it, _ in seen[3:5]] == [(2, 4), (2, 5)]
    assert eng.state.iteration == 23 and eng.state.epoch == 3


def test_terminate_in_the_last_epoch_then_run_again_starts_a_new_run_in_process():
    stops = []

    def stop_once(e):
        if not stops:
            stops.append(e.state.iteration)
            e.terminate()

    eng, _ = _trace_engine((Events.ITERATION_COMPLETED(once=17), stop_once))
    state = eng.run(range(10), max_epochs=2)
    assert state.iteration == 17
    state = eng.run(range(10), max_epochs=2)  # Ignite: the last epoch was reached, a new run
    assert state.iteration == 20 and state.epoch == 2


def test_loaded_finished_state_warns_and_does_not_restart():
    eng, _ = _trace_engine()
    eng.run(range(10), max_epochs=2, seed=1)
    sd = eng.state_dict()
    fresh, seen = _trace_engine()
    fresh.load_state_dict(sd)
    with pytest.warns(UserWarning, match="max_epochs"):
        state = fresh.run(range(10))
    assert seen == [] and state.iteration == 20
    state = fresh.run(range(10), max_epochs=3)  # training further continues the same run
    assert state.iteration == 30 and [it for _, it, _ in seen] == list(range(21, 31))
    assert state.run_id == sd["run_id"]


@pytest.mark.parametrize(
    "event,action",
    [
        (Events.ITERATION_STARTED(once=14), lambda e: e.terminate()),  # before its step ran
        (Events.GET_BATCH_COMPLETED(once=13), lambda e: e.terminate()),  # batch 14 fetched
        (Events.EPOCH_STARTED(once=2), lambda e: e.terminate()),
        (Events.EPOCH_COMPLETED(once=1), lambda e: e.terminate()),
        (Events.ITERATION_COMPLETED(once=20), lambda e: e.terminate()),  # EPOCH_COMPLETED due
    ],
)
def test_state_after_terminate_anywhere_resumes_at_the_next_batch(event, action):
    ref = _reference()
    eng, seen = _trace_engine((event, action))
    eng.run(auto_dataloader(DS, batch_size=4), max_epochs=2, seed=3)
    _, resumed = _resume(eng.state_dict())
    assert seen + resumed == ref


@pytest.mark.parametrize(
    "event,action,taken_at",
    [
        (Events.ITERATION_COMPLETED(once=14), lambda e: e.interrupt(), Events.INTERRUPT),
        (
            Events.ITERATION_COMPLETED(once=14),
            lambda e: e.terminate_epoch(),
            Events.TERMINATE_SINGLE_EPOCH,
        ),
    ],
)
def test_state_taken_at_interrupt_or_terminate_epoch_resumes_like_the_run_goes_on(
    event, action, taken_at
):
    eng, seen = _trace_engine((event, action))
    saved = {}
    eng.add_event_handler(taken_at, lambda e: saved.update(sd=copy.deepcopy(e.state_dict())))
    data = auto_dataloader(DS, batch_size=4)
    eng.run(data, max_epochs=3, seed=3)
    done = len(seen)
    if eng.state.iteration < 30 and taken_at == Events.INTERRUPT:
        eng.run(data)  # the in-process continuation
    _, resumed = _resume(saved["sd"])
    assert seen[:14] + resumed == seen
    assert done >= 14


def test_state_taken_in_exception_handler_reruns_the_failed_batch():
    ref = _reference()
    calls = {"n": 0}
    saved = {}

    def step(engine, batch):
        calls["n"] += 1
        if engine.state.iteration == 7:
            raise RuntimeError("boom")

    eng = Engine(step)
    eng.add_event_handler(Events.EXCEPTION_RAISED, lambda e, exc: saved.update(sd=e.state_dict()))
    eng.run(auto_dataloader(DS, batch_size=4), max_epochs=2, seed=3)
    assert saved["sd"]["iteration"] == 6 and saved["sd"]["pass_batches"] == 6
    _, resumed = _resume(saved["sd"])
    assert resumed == ref[6:]  # iteration 7 runs again, then the rest


def test_in_process_run_after_an_exception_reenters_the_epoch():
    ref = _reference()
    seen, failed = [], []

    def step(engine, batch):
        if engine.state.iteration == 7 and not failed:
            failed.append(7)
            raise RuntimeError("boom")
        seen.append((engine.state.epoch, engine.state.iteration, batch[0].tolist()))

    eng = Engine(step)
    data = auto_dataloader(DS, batch_size=4)
    with pytest.raises(RuntimeError, match="boom"):
        eng.run(data, max_epochs=2, seed=3)
    eng.run(data)
    assert seen == ref


def test_preempted_state_resumes_at_the_next_batch():
    import os
    import signal

    ref = _reference()
    eng, seen = _trace_engine(
        (Events.ITERATION_COMPLETED(once=5), lambda: os.kill(os.getpid(), signal.SIGTERM))
    )
    saved = {}
    eng.register_preemption_saver(lambda e: saved.update(sd=copy.deepcopy(e.state_dict())))
    with pytest.raises(Preempted):
        eng.run(auto_dataloader(DS, batch_size=4), max_epochs=2, seed=3)
    assert saved["sd"]["iteration"] == 5
    _, resumed = _resume(saved["sd"])
    assert seen + resumed == ref


@pytest.mark.parametrize(
    "kwargs,exc",
    [
        (dict(max_epochs=0), ValueError),
        (dict(max_epochs=-1), ValueError),
        (dict(max_epochs=2.5), TypeError),
        (dict(max_epochs="3"), TypeError),
        (dict(max_epochs=True), TypeError),
        (dict(max_iters=-2), ValueError),
        (dict(max_iters=0), ValueError),
        (dict(epoch_length=2.5), TypeError),
        (dict(epoch_length=0), ValueError),
        (dict(seed=-1), ValueError),
        (dict(seed=1.5), ValueError),
    ],
)
def test_bad_run_arguments_are_refused_on_fresh_and_continued_runs(kwargs, exc):
    with pytest.raises(exc, match="|".join(kwargs)):
        Engine(lambda e, b: None).run(range(4), **kwargs)
    eng = Engine(lambda e, b: None)
    eng.add_event_handler(Events.ITERATION_COMPLETED(once=2), lambda e: e.interrupt())
    eng.run(range(4), max_epochs=3)
    with pytest.raises(exc, match="|".join(kwargs)):
        eng.run(range(4), **kwargs)


@pytest.mark.parametrize(
    "key,value",
    [
        ("seed", -3),
        ("seed", "7"),
        ("cursor", -100),
        ("data_pass", "a"),
        ("pass_batches", -1),
        ("world_size", 0),
        ("run_id", ""),
        ("epoch_state", {"epoch": 1, "iterations_in_epoch": -1, "in_progress": True}),
        ("epoch_state", {"epoch": 1, "iterations_in_epoch": 99, "in_progress": True}),
        ("epoch_state", {"epoch": 1, "iterations_in_epoch": 1, "in_progress": "yes"}),
        ("epoch_state", [1, 2]),
        ("data_length", 0),
        ("global_batch_size", 1.5),
    ],
)
def test_load_state_dict_validates_every_key_it_reads(key, value):
    eng = Engine(lambda e, b: None)
    eng.run(range(10), max_epochs=2, seed=1)
    sd = dict(eng.state_dict())
    sd[key] = value
    with pytest.raises(ValueError, match=key):
        Engine(lambda e, b: None).load_state_dict(sd)


def test_resume_over_data_of_another_length_is_refused_unless_epoch_length_given():
    eng = Engine(lambda e, b: None)
    eng.add_event_handler(Events.ITERATION_COMPLETED(once=3), lambda e: e.terminate())
    small = torch.utils.data.TensorDataset(torch.arange(12))
    eng.run(auto_dataloader(small, batch_size=2), max_epochs=2, seed=1)
    sd = eng.state_dict()
    other = torch.utils.data.TensorDataset(torch.arange(8))
    resumed = Engine(lambda e, b: None)
    resumed.load_state_dict(sd)
    with pytest.raises(ValueError, match=r"6 batches per pass.*has 4"):
        resumed.run(auto_dataloader(other, batch_size=2))
    resumed = Engine(lambda e, b: None)
    resumed.load_state_dict(sd)
    with pytest.raises(ValueError, match=r"global batch of 2 samples.*has 4"):
        resumed.run(auto_dataloader(torch.utils.data.TensorDataset(torch.arange(24)), batch_size=4))
    resumed = Engine(lambda e, b: None)
    resumed.load_state_dict(sd)
    state = resumed.run(auto_dataloader(other, batch_size=2), epoch_length=6)  # on purpose
    assert state.iteration == 12


def test_fresh_engine_state_round_trips():
    f = lambda e, b: None  # noqa: E731
    eng = Engine(f)
    eng.load_state_dict(Engine(f).state_dict())
    assert eng.run(range(3), max_epochs=2).iteration == 6


def test_state_dict_round_trips_before_run():
    eng = Engine(lambda e, b: None)
    eng.add_event_handler(Events.ITERATION_COMPLETED(once=14), lambda e: e.terminate())
    eng.run(auto_dataloader(DS, batch_size=4), max_epochs=3, seed=2)
    sd = eng.state_dict()
    loaded = Engine(lambda e, b: None)
    loaded.load_state_dict(sd)
    again = loaded.state_dict()
    assert {k: v for k, v in again.items() if k != "rank_state"} == {
        k: v for k, v in sd.items() if k != "rank_state"
    }
