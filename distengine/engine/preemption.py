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

The signal routing itself (:func:`catch_preemption`, :func:`ignore_preemption_signals`)
lives in the leaf module :mod:`distengine.signals`, so that the data loader's workers can
ignore the signals without importing the engine; it is re-exported here.
"""

from __future__ import annotations

from distengine.distributed.env import preempt_exit_from_env
from distengine.signals import PREEMPT_SIGNALS, catch_preemption, ignore_preemption_signals

__all__ = [
    "PREEMPT_EXIT_CODE",
    "PREEMPT_SIGNALS",
    "Preempted",
    "catch_preemption",
    "ignore_preemption_signals",
]

PREEMPT_EXIT_CODE = preempt_exit_from_env()  # DISTENGINE_PREEMPT_EXIT, checked: 1..255


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
