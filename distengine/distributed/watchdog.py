"""The watchdog thread: failures, hangs and orphans, all ended in bounded time.

A rank that fails writes a short record into the job's store (:func:`record_failure`)
and raises the store's *alert* key. Every rank runs a :class:`FailureWatchdog`, a daemon
thread that polls that one key. When it sees that *another* rank failed, it prints who
failed and why, gives its own process a short grace to end by itself (e.g. its blocked
collective errors out), and then ends it with exit status 1. This is what releases a
peer blocked in a collective even without a launcher: a blocked collective never returns
to Python, but this thread still runs.

The watchdog also bounds the failing rank itself: once its own failure is recorded, the
process must end within ``failure_timeout`` seconds (handlers, traceback, teardown), or
the watchdog ends it.

Two more duties share the thread (one poll loop, no extra collective, nothing on the
training loop's path):

- **Hangs.** When the same agreement or checkpoint collective has been in flight in this
  process for ``hang_timeout`` seconds (see :mod:`.hangs`), the thread claims the job's
  hang report, raises the alert, collects every rank's where-record through the store and
  prints one report; the job then fails as above, so every rank exits with status 1.
- **Orphans.** A worker started by torchrun's agent or by ``spawn`` must not outlive it
  (torchrun starts workers in sessions of their own, so nothing else stops them when the
  agent is SIGKILLed). The thread watches the launcher's pid and ends the worker (and its
  own child processes, e.g. DataLoader workers) when the launcher is gone.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

from . import hangs

__all__ = [
    "ALL_RELEASED",
    "FAILURE_EXIT_CODE",
    "FailureRecord",
    "FailureWatchdog",
    "ParentWatch",
    "first_failure",
    "record_failure",
]

FAILURE_EXIT_CODE = 1
"""Exit status of a process ended by the watchdog (its own failure, or a peer's)."""

_FIRST = "failure/first"
ALERT = "alert"
"""Raised after a failure or a hang-report request: the one key every watchdog polls."""
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


def record_failure(
    store: dist.Store, rank: int, exc: BaseException, details: str | None = None
) -> None:
    """Writes ``rank``'s failure into ``store``; the first rank to report it wins ``first``.

    Args:
        store: the job's store (already prefixed for distengine).
        rank: the reporting rank.
        exc: the exception that ends the job.
        details: stored instead of the formatted traceback (e.g. a hang report).

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
    text = (
        details
        if details is not None
        else "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    )
    # The message and traceback are written before ``first`` so that a reader who sees
    # ``first`` can always read them; the alert last, so that a watchdog woken by it finds
    # the record.
    store.set(_message_key(rank), message)
    store.set(_traceback_key(rank), text)
    store.compare_set(_FIRST, "", str(rank))
    store.set(ALERT, "1")


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


def _kill_children() -> None:
    """SIGKILLs this process's direct children (DataLoader workers …); Linux only, best effort."""
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid == me:
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, IndexError, ValueError):
            continue


class ParentWatch:
    """Tells whether the launcher process ``pid`` is gone.

    The direct parent is checked with ``getppid()`` (it changes when the parent dies and
    the process is re-parented); another process through a pidfd where Linux has them,
    else ``kill(pid, 0)``.

    Args:
        pid: the launcher's process id.

    Example:
        >>> ParentWatch(os.getppid()).gone()
        False
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._direct = pid == os.getppid()
        self._pidfd: int | None = None
        self._gone_at_start = False
        if not self._direct and hasattr(os, "pidfd_open"):
            try:
                self._pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                self._gone_at_start = True
            except OSError:  # no pidfd support: fall back to kill(pid, 0)
                self._pidfd = None

    def gone(self) -> bool:
        """Whether the launcher has exited."""
        if self._gone_at_start:
            return True
        if self._direct:
            return os.getppid() != self.pid
        if self._pidfd is not None:
            readable, _, _ = select.select([self._pidfd], [], [], 0)
            return bool(readable)
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class FailureWatchdog:
    """Daemon thread that ends this process when the job failed, hung, or lost its launcher.

    Args:
        store: a store connection used by this thread only (prefixed for distengine);
            ``None`` in a job of one (then only the launcher is watched).
        rank: this process's rank.
        world_size: number of ranks.
        failure_timeout: seconds within which every rank must end after a failure was
            reported; peers are ended after ``poll_interval + grace`` (well below it).
        exit_fn: ends the process (``os._exit`` after flushing; replaceable in tests).
        hang_timeout: seconds a watched collective may stay in flight before the job is
            reported as hung; ``None``: no hang detection.
        launcher_pid: the launcher this process must not outlive; ``None``: not watched.
        hosts_store: this process hosts the store (rank 0 without an agent): after a
            report it waits for every rank to read it before ending.
        in_flight: the in-flight marker to watch (the process's own by default).

    Example:
        >>> import torch.distributed as dist
        >>> dog = FailureWatchdog(dist.HashStore(), rank=0, world_size=2, failure_timeout=10.0)
        >>> dog.start(); dog.stop()
    """

    def __init__(
        self,
        store: dist.Store | None,
        rank: int,
        world_size: int,
        failure_timeout: float,
        exit_fn: Callable[[int], None] = _flush_and_exit,
        *,
        hang_timeout: float | None = None,
        launcher_pid: int | None = None,
        hosts_store: bool = False,
        in_flight: hangs.InFlight = hangs.IN_FLIGHT,
    ) -> None:
        if not failure_timeout > 0:
            raise ValueError(f"failure_timeout must be > 0 seconds, got {failure_timeout}")
        if hang_timeout is not None and not hang_timeout > 0:
            raise ValueError(f"hang_timeout must be > 0 seconds or None, got {hang_timeout}")
        self._store = store
        self._rank = rank
        self._world_size = world_size
        self._acknowledged = False
        self._ack_lock = threading.Lock()
        self.failure_timeout = float(failure_timeout)
        self.hang_timeout = hang_timeout
        # Polling is one small store request: cheap enough at 5 Hz, and fine-grained
        # enough that detection takes a small part of the time bound.
        self.poll_interval = min(0.2, self.failure_timeout / 10)
        if hang_timeout is not None:
            self.poll_interval = min(self.poll_interval, hang_timeout / 10)
        self.grace = min(1.0, self.failure_timeout / 4)
        self._exit_fn = exit_fn
        self._stop = threading.Event()
        self._own_failure_at: float | None = None
        self._ending = False
        self._hosts_store = hosts_store
        self._in_flight = in_flight
        self._seen: tuple[int, float] | None = None  # (seq, first seen) of the collective in flight
        self._answered = False
        self._parent = ParentWatch(launcher_pid) if launcher_pid is not None else None
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
        if self._parent is not None and not self._thread.is_alive():
            self._parent.close()

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

    # --- the loop ------------------------------------------------------------------------
    def _run(self) -> None:
        store_ok = self._store is not None
        while not self._stop.wait(self.poll_interval):
            if self._parent is not None and self._parent.gone():
                self._orphaned()
                return
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
                if self.hang_timeout is not None and not self._answered and self._hung():
                    if self._report_hang():
                        return
                    continue
                if not self._store.check([ALERT]):  # type: ignore[union-attr]
                    continue
                record = first_failure(self._store)  # type: ignore[arg-type]
                if record is None:
                    self._answer_hang_request()
                    continue
            except Exception:
                # The store's host is gone: at the end of a job (rank 0 exited first) or
                # after a crash. Either way there is nothing more to read; the bound on
                # our own failure still applies.
                store_ok = False
                continue
            if record.rank != self._rank:
                try:
                    self._answer_hang_request()  # a report may be waiting for this rank's answer
                    self.acknowledge(self._store)  # type: ignore[arg-type]
                except Exception:  # the host is gone: nobody is waiting for us
                    pass
                self._end(
                    f"rank {record.rank} failed ({record.message}); ending rank {self._rank} "
                    f"(exit status {FAILURE_EXIT_CODE}) so that no rank waits forever in a collective",
                    grace=self.grace,
                )
                return

    # --- hangs ---------------------------------------------------------------------------
    def _hung(self) -> bool:
        """Whether the same watched collective has been in flight for ``hang_timeout``."""
        w = self._in_flight
        seq, name = w.seq, w.waiting_in()
        now = time.monotonic()
        if name is None:
            self._seen = None
            return False
        if self._seen is None or self._seen[0] != seq:
            self._seen = (seq, now)
            return False
        return now - self._seen[1] >= self.hang_timeout  # type: ignore[operator]

    def _waited(self) -> float | None:
        if self._seen is None or self._in_flight.waiting_in() is None:
            return None
        return round(time.monotonic() - self._seen[1], 1)

    def _answer_hang_request(self) -> None:
        store = self._store
        if self._answered or store is None or not store.check([hangs.HANG_AT]):
            return
        self._answered = True
        hangs.answer(store, hangs.where_record(self._rank, self._waited(), self._in_flight))

    def _report_hang(self) -> bool:
        """Reports the hang when this rank is the first to notice it (then ends the process
        and returns ``True``); otherwise answers the reporter and returns ``False``."""
        store = self._store
        assert store is not None and self.hang_timeout is not None
        mine = hangs.where_record(self._rank, self._waited(), self._in_flight)
        if not hangs.claim_report(store, self._rank):
            self._answer_hang_request()
            return False
        self._answered = True
        hangs.answer(store, mine)
        store.set(ALERT, "1")
        collect_for = max(1.0, min(5.0, self.failure_timeout / 2))
        records = hangs.collect(
            store, self._world_size, time.monotonic() + collect_for, time.monotonic, time.sleep
        )
        records[self._rank] = mine
        report, missing = hangs.compose_report(mine, records, self._world_size, self.hang_timeout)
        sys.stderr.write(f"[distengine] {report}\n")
        sys.stderr.flush()
        name = (mine.get("collective") or {}).get("name")
        summary = (
            f"ranks {missing} did not reach '{name}' within DISTENGINE_HANG_TIMEOUT="
            f"{self.hang_timeout:g} s (hang report on rank {self._rank})"
        )
        self._own_failure_at = time.monotonic()
        record_failure(store, self._rank, hangs.HangError(summary), details=report)
        self.acknowledge(store)
        if self._hosts_store:
            # Our store dies with us: first let every peer read why the job ends.
            try:
                store.wait([ALL_RELEASED], timedelta(seconds=self.failure_timeout))
            except Exception:
                pass
        self._end(
            f"ending rank {self._rank} (exit status {FAILURE_EXIT_CODE}) after the hang report above"
        )
        return True

    # --- orphans -------------------------------------------------------------------------
    def _orphaned(self) -> None:
        # Nothing is written to the store: it may have died with the launcher (torchrun's
        # agent hosts it), and the peers learn of this rank's end from their collectives.
        assert self._parent is not None
        if self._exit_fn is _flush_and_exit:  # the process really ends: so do its children
            _kill_children()
        self._end(
            f"rank {self._rank}: the launcher that started this process (pid {self._parent.pid}) "
            f"is gone; ending this worker (exit status {FAILURE_EXIT_CODE}) so that it does not "
            "run on as an orphan"
        )

    def _end(self, message: str, grace: float = 0.0) -> None:
        self._ending = True
        sys.stderr.write(f"[distengine] {message}\n")
        sys.stderr.flush()
        if grace > 0:
            # Give the process a moment to end by itself (its blocked collective often
            # errors out once the failed rank exits), so its own traceback shows first.
            time.sleep(grace)
        self._exit_fn(FAILURE_EXIT_CODE)
