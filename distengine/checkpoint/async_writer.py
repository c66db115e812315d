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
    """Runs this thread (and the threads it starts) at the lowest CPU priority, on Linux.

    The write competes with training for CPU (copying into the page cache, hashing);
    at nice 19 it takes the CPU time training leaves idle instead of slowing the steps.
    Linux applies ``setpriority`` to one thread when given its native id; elsewhere it
    would apply to the whole process, so it is skipped.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except OSError:
        pass  # not permitted in this container: keep the default priority
