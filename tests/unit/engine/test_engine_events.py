"""Event order, filters and handler API, checked against pytorch-ignite 0.5.5 as the oracle."""

import ignite.engine as ignite_engine  # the oracle is a test dependency: no silent skip
import pytest
import torch

from distengine.engine import Engine, EventEnum, Events, EventsList, RemovableEventHandle

CORE = [
    "STARTED",
    "EPOCH_STARTED",
    "GET_BATCH_STARTED",
    "GET_BATCH_COMPLETED",
    "ITERATION_STARTED",
    "ITERATION_COMPLETED",
    "EPOCH_COMPLETED",
    "COMPLETED",
    "DATALOADER_STOP_ITERATION",
    "TERMINATE",
    "TERMINATE_SINGLE_EPOCH",
    "INTERRUPT",
]


def _trace(engine_cls, events_cls, make_data, actions=None, **run_kwargs):
    log = []
    actions = actions or {}

    def step(engine, batch):
        return batch

    eng = engine_cls(step)
    for name in CORE:
        ev = getattr(events_cls, name)

        def record(e, n=name, **_):  # Ignite passes iter_counter= to TERMINATE_SINGLE_EPOCH
            log.append((n, e.state.epoch, e.state.iteration))
            act = actions.get((n, e.state.iteration))
            if act:
                getattr(e, act[0])(**act[1])

        eng.add_event_handler(ev, record)
    state = eng.run(make_data(), **run_kwargs)
    return log, (state.epoch, state.iteration)


SCENARIOS = [
    (lambda: [1, 2, 3], dict(max_epochs=2), {}),
    (lambda: list(range(5)), dict(max_epochs=3, epoch_length=2), {}),
    (lambda: iter(range(5)), dict(max_epochs=2), {}),
    (lambda: iter(range(6)), dict(max_epochs=2, epoch_length=3), {}),
    (lambda: None, dict(max_epochs=2, epoch_length=3), {}),
    (lambda: [1, 2, 3], dict(max_iters=5), {}),
    (lambda: [1, 2, 3], dict(max_epochs=3), {("ITERATION_COMPLETED", 4): ("terminate", {})}),
    (lambda: [1, 2, 3], dict(max_epochs=3), {("ITERATION_STARTED", 2): ("terminate", {})}),
    (
        lambda: [1, 2, 3],
        dict(max_epochs=3),
        {("ITERATION_COMPLETED", 4): ("terminate", {"skip_completed": True})},
    ),
    (lambda: [1, 2, 3], dict(max_epochs=3), {("EPOCH_COMPLETED", 3): ("terminate", {})}),
    (lambda: [1, 2, 3], dict(max_epochs=3), {("ITERATION_COMPLETED", 2): ("terminate_epoch", {})}),
    (
        lambda: [1, 2, 3],
        dict(max_epochs=3),
        {("GET_BATCH_COMPLETED", 4): ("terminate_epoch", {"skip_epoch_completed": True})},
    ),
    (lambda: [1, 2, 3], dict(max_epochs=2), {("STARTED", 0): ("terminate", {})}),
]


@pytest.mark.parametrize("make_data,run_kwargs,actions", SCENARIOS)
def test_event_order_matches_ignite(make_data, run_kwargs, actions):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = _trace(Engine, Events, make_data, actions, **run_kwargs)
        theirs = _trace(
            ignite_engine.Engine, ignite_engine.Events, make_data, actions, **run_kwargs
        )
    assert ours == theirs


def test_exhausted_iterator_warns_and_ends():
    eng = Engine(lambda e, b: b)
    ended = []
    eng.add_event_handler(Events.TERMINATE, lambda: ended.append("TERMINATE"))
    eng.add_event_handler(Events.COMPLETED, lambda: ended.append("COMPLETED"))
    with pytest.warns(UserWarning, match="can not provide data anymore"):
        state = eng.run(iter(range(4)), max_epochs=5)
    assert state.iteration == 4 and state.epoch_length == 4 and state.epoch == 2
    assert ended == ["COMPLETED"]


def test_terminate_epoch_on_started_is_an_error():
    eng = Engine(lambda e, b: b)
    eng.add_event_handler(Events.STARTED, lambda e: e.terminate_epoch())
    with pytest.raises(RuntimeError, match="terminate_epoch"):
        eng.run([1, 2], max_epochs=2)


@pytest.mark.parametrize(
    "event,expected",
    [
        (Events.ITERATION_COMPLETED(every=3), [3, 6, 9]),
        (Events.ITERATION_COMPLETED(once=4), [4]),
        (Events.ITERATION_COMPLETED(once=[2, 7]), [2, 7]),
        (Events.ITERATION_COMPLETED(before=3), [1, 2]),
        (Events.ITERATION_COMPLETED(after=7), [8, 9, 10]),
        (Events.ITERATION_COMPLETED(every=2, after=3, before=9), [4, 6, 8]),
        (Events.ITERATION_COMPLETED(event_filter=lambda e, i: i in (1, 10)), [1, 10]),
        (Events.EPOCH_COMPLETED(every=2), [4, 8]),
    ],
)
def test_filters(event, expected):
    seen = []
    eng = Engine(lambda e, b: b)
    eng.add_event_handler(event, lambda e: seen.append(e.state.iteration))
    eng.run([0, 1], max_iters=10)
    assert seen == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(every=0),
        dict(every=-1),
        dict(once=0),
        dict(once=[]),
        dict(before=-1),
        dict(after=1.5),
        dict(every=2, once=3),
        dict(event_filter=lambda e, i: True, every=2),
    ],
)
def test_filter_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        Events.ITERATION_COMPLETED(**kwargs)


def test_filter_not_callable():
    with pytest.raises(TypeError, match="callable"):
        Events.ITERATION_COMPLETED(event_filter=3)


def test_events_list_and_handles():
    seen = []
    eng = Engine(lambda e, b: b)
    events = Events.STARTED | Events.COMPLETED | Events.EPOCH_COMPLETED(every=2)
    assert isinstance(events, EventsList) and len(events) == 3

    def h(engine, tag):
        seen.append((tag, engine.last_event_name))

    handle = eng.add_event_handler(events, h, "x")
    assert isinstance(handle, RemovableEventHandle)
    eng.run([1], max_epochs=4)
    assert seen == [
        ("x", Events.STARTED),
        ("x", Events.EPOCH_COMPLETED),
        ("x", Events.EPOCH_COMPLETED),
        ("x", Events.COMPLETED),
    ]
    handle.remove()
    assert not eng.has_event_handler(h)
    seen.clear()
    eng.state.max_epochs = None
    eng.run([1], max_epochs=1)
    assert seen == []


def test_handle_as_context_manager_and_removal():
    calls = []
    eng = Engine(lambda e, b: b)

    def on_iter(engine):
        calls.append(engine.state.iteration)

    with eng.add_event_handler(Events.ITERATION_COMPLETED, on_iter):
        assert eng.has_event_handler(on_iter, Events.ITERATION_COMPLETED)
        eng.run([1, 2])
    assert not eng.has_event_handler(on_iter)
    assert calls == [1, 2]
    with pytest.raises(ValueError, match="has no handler attached|is not found among"):
        eng.remove_event_handler(on_iter, Events.ITERATION_COMPLETED)


def test_handler_signature_checked_when_added():
    eng = Engine(lambda e, b: b)

    def needs_two(engine, a, b):
        pass

    with pytest.raises(ValueError, match="takes parameters .* but will be called with"):
        eng.add_event_handler(Events.STARTED, needs_two, 1)
    eng.add_event_handler(Events.STARTED, needs_two, 1, b=2)  # fine
    seen = []
    eng.add_event_handler(Events.COMPLETED, lambda: seen.append("no engine"))
    eng.run([1])
    assert seen == ["no engine"]


def test_on_decorator_args_kwargs():
    got = []
    eng = Engine(lambda e, b: b)

    @eng.on(Events.EPOCH_COMPLETED, 5, k="v")
    def h(engine, a, k):
        got.append((engine.state.epoch, a, k))

    eng.run([1], max_epochs=2)
    assert got == [(1, 5, "v"), (2, 5, "v")]


def test_unknown_event_rejected():
    eng = Engine(lambda e, b: b)
    with pytest.raises(ValueError, match="not a valid event"):
        eng.add_event_handler("nope", lambda: None)


class CustomEvents(EventEnum):
    BACKWARD_DONE = "backward_done"
    SPECIAL = "special"


def test_custom_events_and_event_to_attr():
    def step(engine, batch):
        engine.state.bwd += 1
        engine.fire_event(CustomEvents.BACKWARD_DONE)
        return batch

    eng = Engine(step)
    eng.register_events(*CustomEvents, event_to_attr={CustomEvents.BACKWARD_DONE: "bwd"})
    eng.state.bwd = 0
    seen = []
    eng.add_event_handler(CustomEvents.BACKWARD_DONE(every=2), lambda e: seen.append(e.state.bwd))
    eng.run([1, 2, 3, 4, 5])
    assert seen == [2, 4]
    assert CustomEvents.SPECIAL | Events.STARTED


def test_exception_raised_handlers_receive_exception():
    def step(engine, batch):
        if engine.state.iteration == 2:
            raise KeyError("boom")
        return batch

    eng = Engine(step)
    caught = []
    eng.add_event_handler(
        Events.EXCEPTION_RAISED, lambda e, exc: caught.append((e.state.iteration, exc))
    )
    eng.run([1, 2, 3])  # handled at world size 1, as in Ignite
    assert caught[0][0] == 2 and isinstance(caught[0][1], KeyError)
    eng2 = Engine(step)
    with pytest.raises(KeyError, match="boom"):
        eng2.run([1, 2, 3])


def test_state_fields_and_user_attributes():
    eng = Engine(lambda e, b: b * 10)
    eng.state.my_value = 3
    state = eng.run(torch.arange(4).view(4, 1), max_epochs=1, seed=11)
    assert state.my_value == 3
    assert state.seed == 11 and state.epoch_length == 4 and state.max_epochs == 1
    assert torch.equal(state.output, torch.tensor([30]))
    assert state.times["EPOCH_COMPLETED"] >= 0 and state.times["COMPLETED"] >= 0
    assert "\titeration: 4\n" in repr(state) and repr(state).startswith("State:")
