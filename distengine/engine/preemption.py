"""Preemption: SIGTERM / SIGUSR1 become an agreed stop, a checkpoint, and exit status 75.

While ``Engine.run`` is running in the main thread, SIGTERM and SIGUSR1 (which SLURM can
send ahead of a preemption with ``--signal``) only set a flag. The engine agrees on it
across ranks in its per-iteration agreement, so every rank stops after the same iteration
(at world size > 1 the one after the iteration the signal arrived in, see ``Engine``);
then it calls the registered *preemption savers* (a :class:`~distengine.handlers.Checkpoint`
whose ``to_save`` holds the engine registers itself), fires ``TERMINATE`` (not
``COMPLETED``) and ``run`` raises :class:`Preempted`, a ``SystemExit`` with status
:data:`PREEMPT_EXIT_CODE` (75, ``EX_TEMPFAIL``) — so an uncaught preemption ends the
process with that status for the scheduler to requeue.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from distengine.distributed.env import preempt_exit_from_env

__all__ = [
    "PREEMPT_EXIT_CODE",
    "PREEMPT_SIGNALS",
    "Preempted",
    "catch_preemption",
    "ignore_preemption_signals",
]

PREEMPT_EXIT_CODE = preempt_exit_from_env()  # DISTENGINE_PREEMPT_EXIT, checked: 1..255
PREEMPT_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name)
)


class Preempted(SystemExit):
    """Raised by ``Engine.run`` after a preemption signal, once the savers have written.

    A ``SystemExit``: uncaught, the process exits with :data:`PREEMPT_EXIT_CODE`.
    ``signum`` is the signal that was received (on some rank).
    """

    def __init__(self, signum: int | None, iteration: int):
        super().__init__(PREEMPT_EXIT_CODE)
        self.signum = signum
        self.iteration = iteration

    def __str__(self) -> str:
        return f"preempted (signal {self.signum}) after iteration {self.iteration}; exit status {self.code}"


@contextlib.contextmanager
def catch_preemption(on_signal: Callable[[int], None]) -> Iterator[None]:
    """Routes preemption signals to ``on_signal`` while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        on_signal(signum)

    for sig in PREEMPT_SIGNALS:
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def ignore_preemption_signals(worker_id: int | None = None) -> None:
    """DataLoader ``worker_init_fn`` part: workers ignore SIGTERM/SIGUSR1, so a signal sent
    to the whole process group cannot kill them while the main process saves."""
    for sig in PREEMPT_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
