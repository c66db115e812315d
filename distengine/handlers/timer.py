"""Timer: total or average time between engine events, pausable."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from distengine.engine import Engine, Events


class Timer:
    """Measures the time between events, in seconds, on this process.

    The timer runs from ``reset`` (or construction); ``pause``/``resume`` exclude spans;
    ``step`` counts occurrences so that ``average=True`` gives the time per step. Each rank
    measures its own time; for job-wide throughput see ``ThroughputLogger``.

    Args:
        average: if True, ``value()`` is the running time divided by the number of steps
            (at least 1); otherwise the running time itself.
        clock: returns the current time in seconds; defaults to ``time.perf_counter``
            (pass a fake clock in tests).

    Attributes:
        total: seconds measured while running, up to the last pause.
        step_count: number of ``step`` calls since the last reset.
        running: whether the timer is measuring now.

    Example:
        Average time of one iteration's process function:

        >>> timer = Timer(average=True).attach(
        ...     trainer,
        ...     start=Events.EPOCH_STARTED,
        ...     resume=Events.ITERATION_STARTED,
        ...     pause=Events.ITERATION_COMPLETED,
        ...     step=Events.ITERATION_COMPLETED,
        ... )
        >>> state = trainer.run(loader, max_epochs=1)
        >>> timer.step_count, 0 < timer.value() < 1  # 4 iterations, seconds per iteration
        (4.0, True)
    """

    def __init__(self, average: bool = False, *, clock: Callable[[], float] = time.perf_counter):
        if not callable(clock):
            raise TypeError(f"clock should be a callable returning seconds, got {clock!r}")
        self._average = average
        self._clock = clock
        self.reset()

    def attach(
        self,
        engine: Engine,
        start: Any = Events.STARTED,
        pause: Any = Events.COMPLETED,
        resume: Any | None = None,
        step: Any | None = None,
    ) -> Timer:
        """Drives the timer from events of ``engine``.

        Args:
            engine: the engine whose events control the timer.
            start: event that resets and starts the timer.
            pause: event that pauses it.
            resume: event that resumes it (None: never resumed after a pause).
            step: event that counts one step (None: no steps, useful with ``average=False``).

        Returns:
            This timer.

        Example:
            >>> epoch_timer = Timer().attach(trainer, start=Events.EPOCH_STARTED,
            ...                              pause=Events.EPOCH_COMPLETED)
            >>> state = trainer.run(loader, max_epochs=1)
            >>> epoch_timer.value() > 0  # seconds of the last epoch
            True
        """
        engine.add_event_handler(start, self.reset)
        engine.add_event_handler(pause, self.pause)
        if resume is not None:
            engine.add_event_handler(resume, self.resume)
        if step is not None:
            engine.add_event_handler(step, self.step)
        return self

    def reset(self, *args: Any) -> Timer:
        """Sets the total and step count to zero and starts running (engine args ignored)."""
        self._t0 = self._clock()
        self.total = 0.0
        self.step_count = 0.0
        self.running = True
        return self

    def pause(self, *args: Any) -> None:
        """Stops measuring, keeping the time so far; no effect if already paused."""
        if self.running:
            self.total += self._clock() - self._t0
            self.running = False

    def resume(self, *args: Any) -> None:
        """Starts measuring again after a pause; no effect if running."""
        if not self.running:
            self._t0 = self._clock()
            self.running = True

    def step(self, *args: Any) -> None:
        """Counts one step (the divisor of ``value()`` when ``average=True``)."""
        self.step_count += 1.0

    def value(self) -> float:
        """Returns the time measured so far, divided by the step count if ``average``.

        Example:
            >>> Timer(clock=iter([0.0, 2.5]).__next__).value()
            2.5
        """
        total = self.total
        if self.running:
            total += self._clock() - self._t0
        if self._average:
            return total / max(self.step_count, 1.0)
        return total
