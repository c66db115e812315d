"""Checking callables against the arguments they will be called with, when they are given.

A handler, process function or event filter that cannot take its arguments fails when it
is added, with a ``ValueError`` naming it, instead of in the middle of a run.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["check_signature", "wants_engine"]


def check_signature(fn: Callable, description: str, *args: Any) -> None:
    """Raises ``ValueError`` unless ``fn`` can be called with ``args``.

    Example:
        >>> check_signature(lambda engine, batch: None, "process_function", "engine", "batch")
        >>> check_signature(lambda: None, "event_filter", "engine", "event")
        Traceback (most recent call last):
        ...
        ValueError: Error adding <function <lambda> at ...> 'event_filter': takes parameters [] but will be called with ['engine', 'event'] (too many positional arguments)
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins without a signature: trust the caller
    try:
        sig.bind(*args)
    except TypeError as e:
        raise ValueError(
            f"Error adding {fn} '{description}': takes parameters {list(sig.parameters)} but will "
            f"be called with {list(args)} ({e})"
        ) from None


def wants_engine(handler: Callable, engine: Any, args: tuple, kwargs: dict) -> bool:
    """Whether ``handler`` takes the engine first (``handler(engine, *args, **kwargs)``) or not
    (``handler(*args, **kwargs)``).

    Raises:
        ValueError: it can be called neither way.
    """
    try:
        sig = inspect.signature(handler)
    except (TypeError, ValueError):
        return True  # builtins without a signature: trust the caller
    try:
        sig.bind(engine, *args, **kwargs)
        return True
    except TypeError as with_engine:
        try:
            sig.bind(*args, **kwargs)
            return False
        except TypeError:
            name = getattr(handler, "__qualname__", repr(handler))
            raise ValueError(
                f"Error adding handler {name}{sig}: it takes parameters {list(sig.parameters)} but "
                f"will be called with the engine and args={args!r}, kwargs={kwargs!r} "
                f"({with_engine})"
            ) from None
