"""One background write at a time, with its error kept for the caller to surface later."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

__all__ = ["BackgroundWriter"]


class BackgroundWriter:
    """Runs one job at a time on a thread; :meth:`wait` joins it and returns its error.

    The thread is not a daemon: the interpreter waits for a running write at exit
    instead of cutting a checkpoint in half.

    Example:
        >>> w = BackgroundWriter()
        >>> w.submit(lambda: None)
        >>> w.wait() is None
        True
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def busy(self) -> bool:
        """Whether a job was submitted and not yet waited for."""
        return self._thread is not None

    def submit(self, job: Callable[[], None]) -> None:
        """Starts ``job`` in the background; the previous job must have been waited for."""
        assert self._thread is None, "wait() for the previous write before submitting another"

        def run() -> None:
            _lower_priority()
            try:
                job()
            except BaseException as e:  # kept and reported by wait(), on the caller's thread
                self._error = e

        self._thread = threading.Thread(target=run, name="distengine-ckpt-writer", daemon=False)
        self._thread.start()

    def wait(self) -> BaseException | None:
        """Blocks until the current job (if any) ends; returns (and forgets) its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        return error


def _lower_priority() -> None:
    """Makes this thread (and the threads it starts) idle-priority work, on Linux.

    The write competes with training for CPU (copying into the page cache, hashing). As
    ``SCHED_IDLE`` work it runs on the CPU time training leaves over: where training keeps
    every core busy it gets a share of about 0.3% (CFS weight 3 against 1024 for a normal
    thread; nice 19 is weight 15), and it never preempts a training thread when it wakes
    up, which a nice-19 writer, woken after every block written, can. It is not starved
    outright, so a write always progresses, and ``wait()`` (the caller blocking) leaves it
    whole cores. Where ``SCHED_IDLE`` is refused the thread falls back to nice 19. Linux
    applies both to one thread given its native id; elsewhere they would apply to the whole
    process, so both are skipped.
    """
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        return
    except (OSError, AttributeError):
        pass  # a seccomp profile may refuse it: nice 19 is the next best
    try:
        os.setpriority(os.PRIO_PROCESS, tid, 19)
    except OSError:
        pass  # not permitted in this container: keep the default priority
