"""Which engine run is the outermost one in progress (on this thread).

An evaluator run inside a trainer's handler is part of the trainer's run. Handlers that
fire on the evaluator but belong to the training run (a best-model ``Checkpoint``) ask
:func:`outermost_engine` for the engine whose run they belong to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

__all__ = ["outermost_engine", "running"]

_outermost: ContextVar[Any] = ContextVar("distengine_outermost_engine", default=None)


@contextlib.contextmanager
def running(engine: Any) -> Iterator[None]:
    """Marks ``engine`` as running for the block, unless a run is already in progress.

    Example:
        >>> with running("trainer"):
        ...     with running("evaluator"):
        ...         outermost_engine()
        'trainer'
    """
    token = _outermost.set(engine) if _outermost.get() is None else None
    try:
        yield
    finally:
        if token is not None:
            _outermost.reset(token)


def outermost_engine() -> Any:
    """The engine of the outermost run in progress, or ``None`` outside any run."""
    return _outermost.get()
