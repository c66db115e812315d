"""Events, event filters, lists of events and removable handles.

An event is a member of an :class:`EventEnum`. Calling a member with ``every``, ``once``,
``before``, ``after`` or ``event_filter`` returns a *filtered* copy of it; ``|`` joins
events into an :class:`EventsList`. A filter is a callable ``(engine, count) -> bool``
where ``count`` is the engine counter the event is tied to (``state.iteration`` for
iteration-level events, ``state.epoch`` for the others).
"""

from __future__ import annotations

import numbers
import weakref
from collections.abc import Callable, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any

from distengine.engine.signatures import check_signature

if TYPE_CHECKING:
    from distengine.engine.engine import Engine

__all__ = [
    "CallableEventWithFilter",
    "EventEnum",
    "Events",
    "EventsList",
    "RemovableEventHandle",
]

EventFilter = Callable[[Any, int], bool]


def _positive_int(name: str, value: Any, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        bound = "greater or equal to zero" if allow_zero else "greater than zero"
        raise ValueError(f"Argument {name} should be integer and {bound}, got {value!r}")


class CallableEventWithFilter:
    """An event value that can carry a filter; calling it returns a filtered copy.

    Args:
        value: the event's string value (e.g. ``"iteration_completed"``).
        event_filter: ``(engine, count) -> bool`` deciding whether handlers run.
        name: the member name, for ``repr``.
    """

    def __init__(
        self, value: str, event_filter: EventFilter | None = None, name: str | None = None
    ):
        self._value_ = value
        self._name_ = name
        self.filter = event_filter

    @property
    def name(self) -> str | None:
        return self._name_

    @property
    def value(self) -> str:
        return self._value_

    def __call__(
        self,
        event_filter: EventFilter | None = None,
        every: int | None = None,
        once: int | Sequence[int] | None = None,
        before: int | None = None,
        after: int | None = None,
    ) -> CallableEventWithFilter:
        """Returns this event with a filter.

        Only one of ``event_filter``, ``every``, ``once`` may be given, except that
        ``every`` combines with ``before``/``after``.

        Example:
            >>> ev = Events.ITERATION_COMPLETED(every=100)
            >>> ev2 = Events.EPOCH_COMPLETED(once=[1, 5])
        """
        kinds = [event_filter is not None, once is not None]
        kinds.append(every is not None or before is not None or after is not None)
        if sum(kinds) != 1:
            raise ValueError(
                "Only one of the input arguments should be specified, except before, after and "
                f"every (got event_filter={event_filter!r}, every={every!r}, once={once!r}, "
                f"before={before!r}, after={after!r})"
            )
        if event_filter is not None:
            if not callable(event_filter):
                raise TypeError(
                    f"Argument event_filter should be a callable, got {type(event_filter).__name__}"
                )
            check_signature(event_filter, "event_filter", "engine", "event")
            return self._with_filter(event_filter)
        if once is not None:
            values = [once] if isinstance(once, numbers.Integral) else once
            if (
                not isinstance(values, Sequence)
                or not values
                or any(
                    isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1
                    for v in values
                )
            ):
                raise ValueError(
                    "Argument once should either be a positive integer or a list of positive "
                    f"integers, got {once!r}"
                )
            return self._with_filter(_once_filter(frozenset(int(v) for v in values)))
        if every is not None:
            _positive_int("every", every)
        if before is not None:
            _positive_int("before", before, allow_zero=True)
        if after is not None:
            _positive_int("after", after, allow_zero=True)
        if before is None and after is None:
            if every == 1:
                return self._with_filter(None)
            return self._with_filter(_every_filter(int(every)))  # type: ignore[arg-type]
        return self._with_filter(_window_filter(every or 1, before, after))

    def _with_filter(self, event_filter: EventFilter | None) -> CallableEventWithFilter:
        return CallableEventWithFilter(self._value_, event_filter, self._name_)

    def __or__(self, other: Any) -> EventsList:
        return EventsList([self]) | other

    # Events compare and hash by their member NAME, as in Ignite: a filtered event equals its
    # unfiltered member, and ``Events.STARTED == "STARTED"``.
    def __eq__(self, other: Any) -> bool:
        if isinstance(other, CallableEventWithFilter):
            return self._key() == other._key()
        if isinstance(other, str):
            return self._key() == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> str:
        return self._name_ if self._name_ is not None else self._value_

    def __repr__(self) -> str:
        out = f"Events.{self._key()}"
        if self.filter is not None:
            out += f"(filter={self.filter})"
        return out

    __str__ = __repr__


def _every_filter(every: int) -> EventFilter:
    def every_filter(engine: Any, count: int) -> bool:
        return count % every == 0

    return every_filter


def _once_filter(values: frozenset[int]) -> EventFilter:
    def once_filter(engine: Any, count: int) -> bool:
        return count in values

    return once_filter


def _window_filter(every: int, before: int | None, after: int | None) -> EventFilter:
    upper = float("inf") if before is None else before
    lower = 0 if after is None else after

    def window_filter(engine: Any, count: int) -> bool:
        return lower < count < upper and (count - lower - 1) % every == 0

    return window_filter


class EventEnum(CallableEventWithFilter, Enum):
    """Base class for event enumerations; subclass it for custom events.

    Example:
        >>> class BackpropEvents(EventEnum):
        ...     BACKWARD_STARTED = "backward_started"
        ...     BACKWARD_COMPLETED = "backward_completed"
        >>> trainer.register_events(*BackpropEvents)
        >>> @trainer.on(BackpropEvents.BACKWARD_COMPLETED)
        ... def after_backward(engine):
        ...     print("gradients ready")
        >>> trainer.fire_event(BackpropEvents.BACKWARD_COMPLETED)  # from the process function
        gradients ready
    """

    def __new__(cls, value: str) -> EventEnum:
        obj = CallableEventWithFilter.__new__(cls)
        obj._value_ = value
        obj.filter = None
        return obj

    def __init__(self, value: str):  # noqa: D107 - Enum calls this with the value
        self._name_ = self._name_  # set by Enum

    def __eq__(self, other: Any) -> bool:  # same rule as the parent: compare names
        return CallableEventWithFilter.__eq__(self, other)

    def __hash__(self) -> int:
        return CallableEventWithFilter.__hash__(self)

    __repr__ = CallableEventWithFilter.__repr__
    __str__ = CallableEventWithFilter.__repr__


class Events(EventEnum):
    """Events fired by :class:`~distengine.engine.Engine`, in Ignite's order.

    A run fires ``STARTED``; for each epoch ``EPOCH_STARTED``, then for each iteration
    ``GET_BATCH_STARTED``, ``GET_BATCH_COMPLETED``, ``ITERATION_STARTED``,
    ``ITERATION_COMPLETED``; then ``EPOCH_COMPLETED``; finally ``COMPLETED``.
    ``DATALOADER_STOP_ITERATION`` fires when the data is exhausted and restarted,
    ``TERMINATE``/``TERMINATE_SINGLE_EPOCH``/``INTERRUPT`` after the matching request and
    ``EXCEPTION_RAISED`` with the exception.
    """

    EPOCH_STARTED = "epoch_started"
    EPOCH_COMPLETED = "epoch_completed"
    STARTED = "started"
    COMPLETED = "completed"
    ITERATION_STARTED = "iteration_started"
    ITERATION_COMPLETED = "iteration_completed"
    EXCEPTION_RAISED = "exception_raised"
    GET_BATCH_STARTED = "get_batch_started"
    GET_BATCH_COMPLETED = "get_batch_completed"
    DATALOADER_STOP_ITERATION = "dataloader_stop_iteration"
    TERMINATE = "terminate"
    TERMINATE_SINGLE_EPOCH = "terminate_single_epoch"
    INTERRUPT = "interrupt"


class EventsList:
    """Several events sharing one handler, built with ``|``.

    Example:
        >>> events = Events.STARTED | Events.EPOCH_COMPLETED(every=2)
        >>> len(events)
        2
    """

    def __init__(self, events: Sequence[CallableEventWithFilter] = ()):
        self._events: list[CallableEventWithFilter] = []
        for e in events:
            self._append(e)

    def _append(self, event: Any) -> None:
        if not isinstance(event, CallableEventWithFilter):
            raise TypeError(
                "Argument event should be Events or CallableEventWithFilter (a member of an "
                f"EventEnum, filtered or not), got {type(event).__name__}: {event!r}"
            )
        self._events.append(event)

    def __or__(self, other: Any) -> EventsList:
        out = EventsList(self._events)
        if isinstance(other, EventsList):
            for e in other:
                out._append(e)
        else:
            out._append(other)
        return out

    def __iter__(self):
        return iter(self._events)

    def __getitem__(self, i: int) -> CallableEventWithFilter:
        return self._events[i]

    def __len__(self) -> int:
        return len(self._events)

    def __repr__(self) -> str:
        return f"EventsList({self._events!r})"


class RemovableEventHandle:
    """Returned by ``add_event_handler``; ``remove()`` detaches the handler.

    Holds weak references, so it does not keep the engine or handler alive. Also a
    context manager: the handler is removed on exit.

    Example:
        >>> def log(engine):
        ...     print(engine.state.iteration)
        >>> with trainer.add_event_handler(Events.EPOCH_COMPLETED, log):
        ...     state = trainer.run(loader, max_epochs=1)
        4
        >>> state = trainer.run(loader, max_epochs=1)  # log was removed: prints nothing
    """

    def __init__(self, event_name: Any, handler: Callable, engine: Engine):
        self.event_name = event_name
        self.handler = weakref.ref(handler) if _weakrefable(handler) else (lambda: handler)
        self.engine = weakref.ref(engine)

    def remove(self) -> None:
        """Removes the handler if the engine and handler still exist and it is attached."""
        handler, engine = self.handler(), self.engine()
        if handler is None or engine is None:
            return
        if isinstance(self.event_name, EventsList):
            for e in self.event_name:
                if engine.has_event_handler(handler, e):
                    engine.remove_event_handler(handler, e)
        elif engine.has_event_handler(handler, self.event_name):
            engine.remove_event_handler(handler, self.event_name)

    def __enter__(self) -> RemovableEventHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def _weakrefable(obj: Any) -> bool:
    try:
        weakref.ref(obj)
        return True
    except TypeError:
        return False
