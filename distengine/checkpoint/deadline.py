"""Storage calls with a bounded time: a stalled disk or object store raises, never hangs.

A call that blocks in the kernel or in a network client cannot be interrupted from Python,
so each storage call runs on a helper thread and the caller waits for it at most the
*I/O timeout*. Streaming calls (writing or reading a payload of any size) are bounded by
progress instead of by total time: they fail once no byte has moved for the I/O timeout.
A call that timed out is abandoned on its (daemon) thread; what it may still write later
is harmless by construction (see ``docs/checkpoints.md``, "Bounded I/O").

The I/O timeout is ``DISTENGINE_STORAGE_TIMEOUT`` seconds (default 120), or the
``io_timeout`` given to :class:`~distengine.checkpoint.Storage` (and so to ``DiskSaver``,
``Checkpoint.latest`` and ``Checkpoint.load_objects``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from distengine.checkpoint.errors import CheckpointTimeoutError

__all__ = ["IO_TIMEOUT_ENV", "Progress", "call_bounded", "call_with_progress", "io_timeout"]

IO_TIMEOUT_ENV = "DISTENGINE_STORAGE_TIMEOUT"
_DEFAULT_IO_TIMEOUT_S = 120.0

T = TypeVar("T")


def io_timeout(value: float | None = None) -> float:
    """The I/O timeout in seconds: ``value`` if given, else the environment, else 120.

    Raises:
        ValueError: the value (or the environment variable) is not a positive number.

    Example:
        >>> io_timeout(5)
        5.0
    """
    source = "io_timeout"
    if value is None:
        raw = os.environ.get(IO_TIMEOUT_ENV)
        if not raw:
            return _DEFAULT_IO_TIMEOUT_S
        source = IO_TIMEOUT_ENV
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{IO_TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{source} must be a positive number of seconds, got {value!r}")
    return float(value)


class Progress:
    """A counter a streaming call bumps as bytes move (read by the waiting caller)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def add(self, n: int) -> None:
        self.value += n


def call_with_progress(
    fn: Callable[[], T], progress: Progress | None, timeout: float, what: str
) -> T:
    """Runs ``fn()`` on a helper thread; returns its result or re-raises its exception.

    Args:
        fn: the storage call.
        progress: if given, the call only times out once ``progress.value`` has not
            changed for ``timeout`` seconds; without it, ``timeout`` bounds the whole call.
        timeout: seconds.
        what: what the call does, naming the file (``"writing s3://b/run/c_1.pt"``).

    Raises:
        CheckpointTimeoutError: the call did not finish (or make progress) in time.

    Example:
        >>> call_with_progress(lambda: 42, None, 1.0, "nothing")
        42
    """
    done = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised on the caller's thread
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=run, name="distengine-storage-call", daemon=True).start()
    last = progress.value if progress is not None else 0
    last_change = time.monotonic()
    slice_s = timeout if progress is None else max(timeout / 4, 0.01)
    while not done.wait(slice_s):
        now = time.monotonic()
        if progress is not None and progress.value != last:
            last, last_change = progress.value, now
            continue
        if now - last_change >= timeout:
            raise CheckpointTimeoutError(
                f"{what}: no progress for {timeout:g} s (the storage may be stalled; the limit "
                f"is set by {IO_TIMEOUT_ENV} or io_timeout)"
            )
    if "error" in box:
        raise box["error"]
    return box["value"]


def call_bounded(fn: Callable[[], T], timeout: float, what: str) -> T:
    """:func:`call_with_progress` without progress: the whole call is bounded by ``timeout``.

    Example:
        >>> call_bounded(lambda: "ok", 1.0, "a call")
        'ok'
    """
    return call_with_progress(fn, None, timeout, what)
