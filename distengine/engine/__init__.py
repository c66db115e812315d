"""The Engine, its events and state, and supervised trainer/evaluator factories."""

from distengine.engine.engine import Engine
from distengine.engine.events import (
    CallableEventWithFilter,
    EventEnum,
    Events,
    EventsList,
    RemovableEventHandle,
)
from distengine.engine.state import State
from distengine.engine.supervised import create_supervised_evaluator, create_supervised_trainer

__all__ = [
    "CallableEventWithFilter",
    "Engine",
    "EventEnum",
    "Events",
    "EventsList",
    "RemovableEventHandle",
    "State",
    "create_supervised_evaluator",
    "create_supervised_trainer",
]
