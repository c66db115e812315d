"""The engine's public hooks for the packages above it: extensions and the handler query."""

import pytest

import distengine.distributed as idist
import distengine.distributed.auto as auto
from distengine import Engine, Events
from distengine.data import auto_dataloader
from distengine.metrics import Accuracy


def test_an_extension_is_made_once_and_lives_with_the_engine():
    engine, other = Engine(lambda e, b: b), Engine(lambda e, b: b)
    made = []
    assert engine.extension("pkg") is None  # no factory: nothing made
    first = engine.extension("pkg", lambda eng: made.append(eng) or {"engine": eng})
    assert engine.extension("pkg", lambda eng: made.append(eng) or {}) is first
    assert engine.extension("pkg") is first and made == [engine]
    assert other.extension("pkg") is None  # per engine
    with pytest.raises(TypeError, match="key must be a str, got int"):
        engine.extension(1)
    with pytest.raises(TypeError, match="factory must be callable, got int"):
        engine.extension("other", 3)


def test_attached_metrics_share_the_engines_metrics_extension():
    engine = Engine(lambda e, b: b)
    assert engine.extension("distengine.metrics") is None
    acc = Accuracy()
    acc.attach(engine, "acc")
    reducer = engine.extension("distengine.metrics")
    assert reducer is not None and acc.is_attached(engine)
    Accuracy().attach(engine, "acc2")
    assert engine.extension("distengine.metrics") is reducer
    with pytest.raises(TypeError, match="distengine Engine"):
        acc.attach(object(), "acc")


def test_event_handlers_lists_the_handlers_of_an_event_in_order():
    engine = Engine(lambda e, b: b)

    def a(engine):
        pass

    def b():
        pass

    assert engine.event_handlers(Events.COMPLETED) == ()
    engine.add_event_handler(Events.COMPLETED, a)
    engine.add_event_handler(Events.ITERATION_COMPLETED(every=2), b)
    engine.add_event_handler(Events.COMPLETED, b)
    assert engine.event_handlers(Events.COMPLETED) == (a, b)
    assert engine.event_handlers(Events.ITERATION_COMPLETED) == (b,)  # filtered ones count
    engine.remove_event_handler(a, Events.COMPLETED)
    assert engine.event_handlers(Events.COMPLETED) == (b,)


def test_auto_dataloader_keeps_ignites_names():
    assert idist.auto_dataloader is auto_dataloader is auto.auto_dataloader
    assert "auto_dataloader" in dir(idist) and "auto_dataloader" in dir(auto)
    with pytest.raises(AttributeError, match="no attribute 'auto_dataloaders'"):
        idist.auto_dataloaders  # noqa: B018
