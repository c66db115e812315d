"""TimeLimit: end the run cleanly when a wall-clock budget (a session limit) is used up."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from distengine.engine import Engine

__all__ = ["TimeLimit"]

_log = logging.getLogger(__name__)


class TimeLimit:
    """Calls ``engine.terminate()`` once ``limit_sec`` seconds have passed since this handler was created.

    Attach it to ``ITERATION_COMPLETED``. On many ranks each rank measures its own time;
    the first rank over the limit terminates, and the engine stops every rank after the
    same iteration (at world size > 1 the next one, see ``Engine``). With a ``Checkpoint`` on ``Events.COMPLETED`` (or ``TERMINATE``) the
    last state is saved, and the next session resumes from it with a fresh budget.

    Args:
        limit_sec: the budget in seconds (default 8 hours).
        clock: returns seconds (default ``time.monotonic``); a test passes a fake one, as to
            ``Timer``.

    Raises:
        TypeError: ``limit_sec`` is not an int, or ``clock`` is not callable.
        ValueError: ``limit_sec`` is not positive.

    Example:
        >>> handle = trainer.add_event_handler(Events.ITERATION_COMPLETED, TimeLimit(4 * 3600))
    """

    def __init__(
        self, limit_sec: int = 28800, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if isinstance(limit_sec, bool) or not isinstance(limit_sec, int):
            raise TypeError(f"Argument limit_sec should be an integer, got {limit_sec!r}")
        if limit_sec <= 0:
            raise ValueError(f"Argument limit_sec should be a positive integer, got {limit_sec}")
        if not callable(clock):
            raise TypeError(f"clock should be a callable returning seconds, got {clock!r}")
        self.limit_sec = limit_sec
        self._clock = clock
        self.start_time = clock()

    def __call__(self, engine: Engine) -> None:
        if self._clock() - self.start_time > self.limit_sec:
            _log.info("Reached the time limit: %s s. Stopping the run", self.limit_sec)
            engine.terminate()
