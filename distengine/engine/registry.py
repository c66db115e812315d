"""Event handler registration and firing, the part of the Engine API about handlers."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from distengine.engine.events import (
    EventEnum,
    Events,
    EventsList,
    RemovableEventHandle,
)
from distengine.engine.signatures import wants_engine

__all__ = ["EventRegistry"]


class EventRegistry:
    """Holds handlers per event and fires them; :class:`Engine` builds on it.

    Each registered handler is stored as ``(call, handler, event)`` where ``call`` takes
    ``(engine, *event_args)``: the filter, the extra arguments and whether the handler
    wants the engine are resolved once, when it is added, not at every firing.
    """

    def __init__(self) -> None:
        self._event_handlers: defaultdict[Any, list[tuple[Callable, Callable, Any]]] = defaultdict(
            list
        )
        self._allowed_events: list[Any] = list(Events)
        self._allowed_events_counts: dict[Any, int] = {}
        self.last_event_name: Any = None

    # --- registration ----------------------------------------------------------------
    def register_events(self, *event_names: Any, event_to_attr: dict | None = None) -> None:
        """Adds custom events that handlers can be attached to and ``fire_event`` can fire.

        Args:
            *event_names: members of an :class:`EventEnum` subclass, or strings.
            event_to_attr: maps each event to the state counter (``"iteration"``,
                ``"epoch"`` or a custom attribute) its filters use.

        Example:
            >>> from distengine.engine import EventEnum
            >>> class Custom(EventEnum):
            ...     FOO = "foo"
            >>> engine = Engine(lambda engine, batch: None)
            >>> engine.register_events(*Custom, event_to_attr={Custom.FOO: "foo_count"})
            >>> engine.state.foo_count  # the counter that Custom.FOO(every=...) filters read
            0
        """
        if event_to_attr is not None and not isinstance(event_to_attr, dict):
            raise ValueError(f"event_to_attr must be a dict, got {type(event_to_attr).__name__}")
        for i, name in enumerate(event_names):
            if not isinstance(name, (str, EventEnum)):
                raise TypeError(
                    f"Value at {i} of event_names should be a str or EventEnum, but given "
                    f"{type(name).__name__}: {name!r}"
                )
            self._allowed_events.append(name)
            if event_to_attr and name in event_to_attr:
                attr = event_to_attr[name]
                self.state.event_to_attr = {
                    **type(self.state).event_to_attr,
                    **self.state.event_to_attr,
                }
                self.state.event_to_attr[name] = attr
                if not hasattr(self.state, attr):
                    setattr(self.state, attr, 0)

    def has_registered_events(self, event: Any) -> bool:
        """Returns whether ``event`` is known to this engine (core or registered)."""
        return event in self._allowed_events

    def _assert_allowed_event(self, event_name: Any) -> None:
        if event_name not in self._allowed_events:
            raise ValueError(
                f"Event {event_name!r} is not a valid event for this Engine: use one of Events or "
                "register it with register_events() first"
            )

    def add_event_handler(
        self, event_name: Any, handler: Callable, *args: Any, **kwargs: Any
    ) -> RemovableEventHandle:
        """Attaches ``handler`` to ``event_name``; it is called as ``handler(engine, *args, **kwargs)``
        (or without the engine if its signature does not take it).

        The signature is checked now: a handler that cannot take the arguments raises
        ``ValueError`` here, not in the middle of a run.

        Args:
            event_name: an event, a filtered event (``Events.X(every=2)``) or an :class:`EventsList`.
            handler: the callable.
            *args: extra positional arguments; **kwargs: extra keyword arguments.

        Returns:
            a :class:`RemovableEventHandle`.

        Example:
            >>> def print_loss(engine):
            ...     print(f"epoch {engine.state.epoch}: loss {engine.state.output:.2f}")
            >>> handle = trainer.add_event_handler(Events.EPOCH_COMPLETED, print_loss)
            >>> state = trainer.run(loader, max_epochs=1)
            epoch 1: loss 0.88
            >>> handle.remove()
        """
        if isinstance(event_name, EventsList):
            for e in event_name:
                self.add_event_handler(e, handler, *args, **kwargs)
            return RemovableEventHandle(event_name, handler, self)  # type: ignore[arg-type]
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        self._assert_allowed_event(event_name)
        event_args: tuple = (Exception(),) if event_name == Events.EXCEPTION_RAISED else ()
        wants_engine_ = wants_engine(handler, self, event_args + args, kwargs)
        call = _make_call(handler, wants_engine_, args, kwargs)
        event_filter = getattr(event_name, "filter", None)
        if event_filter is not None:
            call = self._filtered(call, event_filter, event_name)
        self._event_handlers[event_name].append((call, handler, event_name))
        return RemovableEventHandle(event_name, handler, self)  # type: ignore[arg-type]

    def _filtered(self, call: Callable, event_filter: Callable, event_name: Any) -> Callable:
        attr = self.state.event_to_attr.get(event_name)
        if attr is None:
            raise ValueError(
                f"Event {event_name!r} has no counter to filter on: register it with event_to_attr"
            )

        def filtered(engine: Any, *event_args: Any) -> None:
            if event_filter(engine, getattr(engine.state, attr)):
                call(engine, *event_args)

        return filtered

    def on(self, event_name: Any, *args: Any, **kwargs: Any) -> Callable:
        """Attaches the decorated function to ``event_name`` (see :meth:`add_event_handler`).

        Example:
            >>> @trainer.on(Events.ITERATION_COMPLETED(every=2))
            ... def log(engine):
            ...     print(engine.state.iteration)
            >>> state = trainer.run(loader, max_epochs=1)
            2
            4
        """

        def decorator(f: Callable) -> Callable:
            self.add_event_handler(event_name, f, *args, **kwargs)
            return f

        return decorator

    def has_event_handler(self, handler: Callable, event_name: Any | None = None) -> bool:
        """Returns whether ``handler`` is attached (to ``event_name``, or to any event)."""
        if event_name is not None:
            if event_name not in self._event_handlers:
                return False
            return any(_same(handler, h) for _, h, _ in self._event_handlers[event_name])
        return any(_same(handler, h) for lst in self._event_handlers.values() for _, h, _ in lst)

    def event_handlers(self, event_name: Any) -> tuple[Callable, ...]:
        """The handlers attached to ``event_name``, in the order they run.

        Handlers attached to a filtered form of the event (``Events.ITERATION_COMPLETED(every=2)``)
        are included: they are handlers of that event, their filter decides when they run.

        Example:
            >>> from distengine import Engine, Events
            >>> engine = Engine(lambda engine, batch: batch)
            >>> def log(engine):
            ...     pass
            >>> engine.add_event_handler(Events.COMPLETED, log)  # doctest: +ELLIPSIS
            <...>
            >>> engine.event_handlers(Events.COMPLETED) == (log,)
            True
        """
        return tuple(h for _, h, _ in self._event_handlers.get(event_name, ()))

    def remove_event_handler(self, handler: Callable, event_name: Any) -> None:
        """Detaches ``handler`` from ``event_name`` (``ValueError`` if it is not attached)."""
        lst = self._event_handlers.get(event_name)
        if not lst:
            raise ValueError(f"Input event name {event_name!r} has no handler attached")
        if not any(_same(handler, h) for _, h, _ in lst):
            raise ValueError(
                f"Input handler {handler!r} is not found among the handlers of {event_name!r}"
            )
        # Mutate in place: the run loop holds references to these lists.
        lst[:] = [entry for entry in lst if not _same(handler, entry[1])]

    # --- firing ---------------------------------------------------------------------------
    def fire_event(self, event_name: Any) -> None:
        """Runs the handlers of a (custom) event now.

        Example:
            >>> from distengine.engine import EventEnum
            >>> class Custom(EventEnum):
            ...     FOO = "foo"
            >>> trainer.register_events(*Custom)
            >>> _ = trainer.add_event_handler(Custom.FOO, lambda: print("foo"))
            >>> trainer.fire_event(Custom.FOO)
            foo
        """
        self._assert_allowed_event(event_name)
        self._allowed_events_counts[event_name] = self._allowed_events_counts.get(event_name, 0) + 1
        self._fire_event(event_name)

    def _fire_event(self, event_name: Any, *event_args: Any) -> None:
        self.last_event_name = event_name
        handlers = self._event_handlers.get(event_name)
        if handlers:
            for call, _, _ in list(handlers):
                call(self, *event_args)


def _same(user: Callable, registered: Callable) -> bool:
    if user == registered:
        return True
    # bound methods of the same object compare equal above; functools.partial wrappers do not
    return isinstance(registered, functools.partial) and registered.func == user


def _make_call(handler: Callable, wants_engine: bool, args: tuple, kwargs: dict) -> Callable:
    if wants_engine:
        if not args and not kwargs:
            return handler
        return lambda engine, *ea: handler(engine, *ea, *args, **kwargs)
    return lambda engine, *ea: handler(*ea, *args, **kwargs)
