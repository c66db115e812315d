"""Failure propagation through the store: the failure record and the watchdog thread.

A rank that fails writes a short record into the job's store (:func:`record_failure`).
Every rank runs a :class:`FailureWatchdog`, a daemon thread that polls the store. When it
sees that *another* rank failed, it prints who failed and why, gives its own process a
short grace to end by itself (e.g. its blocked collective errors out), and then ends it
with exit status 1. This is what releases a peer blocked in a collective even without a
launcher: a blocked collective never returns to Python, but this thread still runs.

The watchdog also bounds the failing rank itself: once its own failure is recorded, the
process must end within ``failure_timeout`` seconds (handlers, traceback, teardown), or
the watchdog ends it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch.distributed as dist

__all__ = [
    "ALL_RELEASED",
    "FAILURE_EXIT_CODE",
    "FailureRecord",
    "FailureWatchdog",
    "first_failure",
    "record_failure",
]

FAILURE_EXIT_CODE = 1
"""Exit status of a process ended by the watchdog (its own failure, or a peer's)."""

_FIRST = "failure/first"
_RELEASED = "failure/released"
ALL_RELEASED = "failure/all_released"
"""Set once every rank knows the job failed (see :meth:`FailureWatchdog.acknowledge`)."""
_MAX_MESSAGE = 2000


def _message_key(rank: int) -> str:
    return f"failure/{rank}/message"


def _traceback_key(rank: int) -> str:
    return f"failure/{rank}/traceback"


@dataclass(frozen=True)
class FailureRecord:
    """The first failure reported in a job.

    Attributes:
        rank: the rank that reported it first.
        message: ``"ExceptionType: text"`` (shortened).
        traceback: the formatted traceback of that rank ("" if none was recorded).
    """

    rank: int
    message: str
    traceback: str


def record_failure(store: dist.Store, rank: int, exc: BaseException) -> None:
    """Writes ``rank``'s failure into ``store``; the first rank to report it wins ``first``.

    Args:
        store: the job's store (already prefixed for distengine).
        rank: the reporting rank.
        exc: the exception that ends the job.

    Example:
        >>> import torch.distributed as dist
        >>> store = dist.HashStore()
        >>> record_failure(store, 1, ValueError("boom"))
        >>> first_failure(store).message
        'ValueError: boom'
    """
    message = f"{type(exc).__name__}: {exc}"
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    # The message and traceback are written before ``first`` so that a reader who sees
    # ``first`` can always read them.
    store.set(_message_key(rank), message)
    store.set(_traceback_key(rank), text)
    store.compare_set(_FIRST, "", str(rank))


def first_failure(store: dist.Store) -> FailureRecord | None:
    """The first failure recorded in ``store``, or ``None`` while there is none.

    Example:
        >>> import torch.distributed as dist
        >>> first_failure(dist.HashStore()) is None
        True
    """
    if not store.check([_FIRST]):
        return None
    rank = int(store.get(_FIRST).decode())
    message = store.get(_message_key(rank)).decode(errors="replace")
    tb = (
        store.get(_traceback_key(rank)).decode(errors="replace")
        if store.check([_traceback_key(rank)])
        else ""
    )
    return FailureRecord(rank=rank, message=message, traceback=tb)


def _flush_and_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed stream must not keep the process alive
            pass
    os._exit(code)


class FailureWatchdog:
    """Daemon thread that ends this process when the job has failed.

    Args:
        store: a store connection used by this thread only (prefixed for distengine).
        rank: this process's rank.
        world_size: number of ranks.
        failure_timeout: seconds within which every rank must end after a failure was
            reported; peers are ended after ``poll_interval + grace`` (well below it).
        exit_fn: ends the process (``os._exit`` after flushing; replaceable in tests).

    Example:
        >>> import torch.distributed as dist
        >>> dog = FailureWatchdog(dist.HashStore(), rank=0, world_size=2, failure_timeout=10.0)
        >>> dog.start(); dog.stop()
    """

    def __init__(
        self,
        store: dist.Store,
        rank: int,
        world_size: int,
        failure_timeout: float,
        exit_fn: Callable[[int], None] = _flush_and_exit,
    ) -> None:
        if not failure_timeout > 0:
            raise ValueError(f"failure_timeout must be > 0 seconds, got {failure_timeout}")
        self._store = store
        self._rank = rank
        self._world_size = world_size
        self._acknowledged = False
        self._ack_lock = threading.Lock()
        self.failure_timeout = float(failure_timeout)
        # Polling is one small store request: cheap enough at 5 Hz, and fine-grained
        # enough that detection takes a small part of the time bound.
        self.poll_interval = min(0.2, self.failure_timeout / 10)
        self.grace = min(1.0, self.failure_timeout / 4)
        self._exit_fn = exit_fn
        self._stop = threading.Event()
        self._own_failure_at: float | None = None
        self._ending = False
        self._thread = threading.Thread(target=self._run, name="distengine-watchdog", daemon=True)

    @property
    def ending(self) -> bool:
        """Whether the watchdog has decided to end this process."""
        return self._ending

    def start(self) -> None:
        """Starts polling."""
        self._thread.start()

    def stop(self) -> None:
        """Stops polling; waits for the thread (it may still end the process if it already decided to)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self.poll_interval + self.grace + 1.0)

    def mark_own_failure(self) -> None:
        """Starts the clock: this process must end within ``failure_timeout`` seconds."""
        if self._own_failure_at is None:
            self._own_failure_at = time.monotonic()

    def acknowledge(self, store: dist.Store) -> None:
        """Counts this rank as knowing that the job failed (once per process).

        The store's host (rank 0 without a launcher) waits for every rank's
        acknowledgement before it exits after its own failure: otherwise its peers could
        find the store gone before reading why the job failed.
        """
        with self._ack_lock:
            if self._acknowledged:
                return
            self._acknowledged = True
        if store.add(_RELEASED, 1) >= self._world_size:
            store.set(ALL_RELEASED, "1")

    def _run(self) -> None:
        store_ok = True
        while not self._stop.wait(self.poll_interval):
            own = self._own_failure_at
            if own is not None:
                # This rank failed: it ends by itself or by this bound; reading the store
                # (whose host may be gone by now) would tell it nothing new.
                # One poll early, so that the process is gone within the bound.
                if time.monotonic() - own >= self.failure_timeout - self.poll_interval:
                    self._end(
                        f"rank {self._rank} reported a failure and is still running at the failure "
                        f"timeout ({self.failure_timeout:g} s); ending it (exit status {FAILURE_EXIT_CODE})"
                    )
                    return
                continue
            if not store_ok:
                continue
            try:
                record = first_failure(self._store)
            except Exception:
                # The store's host is gone: at the end of a job (rank 0 exited first) or
                # after a crash. Either way there is nothing more to read; the bound on
                # our own failure still applies.
                store_ok = False
                continue
            if record is not None and record.rank != self._rank:
                try:
                    self.acknowledge(self._store)
                except Exception:  # the host is gone: nobody is waiting for us
                    pass
                self._end(
                    f"rank {record.rank} failed ({record.message}); ending rank {self._rank} "
                    f"(exit status {FAILURE_EXIT_CODE}) so that no rank waits forever in a collective",
                    grace=self.grace,
                )
                return

    def _end(self, message: str, grace: float = 0.0) -> None:
        self._ending = True
        sys.stderr.write(f"[distengine] {message}\n")
        sys.stderr.flush()
        if grace > 0:
            # Give the process a moment to end by itself (its blocked collective often
            # errors out once the failed rank exits), so its own traceback shows first.
            time.sleep(grace)
        self._exit_fn(FAILURE_EXIT_CODE)
