"""The preemption signals, routed or ignored (a leaf module: it imports nothing of distengine).

SIGTERM, and SIGUSR1 (which SLURM can send ahead of a preemption with ``--signal``), ask a
training process to save and stop. :func:`catch_preemption` routes them to a callback while
a block runs (``Engine.run`` sets a flag); :func:`ignore_preemption_signals` makes a
DataLoader worker ignore them, so a signal sent to the whole process group cannot kill the
workers while the main process writes its checkpoint. Signal dispositions belong to the
process, which is why this module keeps no state of its own: each call saves and restores
what it changes.

Example:
    >>> import signal
    >>> signal.SIGTERM in PREEMPT_SIGNALS
    True
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["PREEMPT_SIGNALS", "catch_preemption", "ignore_preemption_signals"]

PREEMPT_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name)
)


@contextlib.contextmanager
def catch_preemption(on_signal: Callable[[int], None]) -> Iterator[None]:
    """Routes preemption signals to ``on_signal`` while the block runs (main thread only).

    The previous handlers are restored when the block ends. In another thread (where Python
    cannot install signal handlers) the block runs without routing.

    Example:
        >>> import os, signal
        >>> seen = []
        >>> with catch_preemption(seen.append):
        ...     os.kill(os.getpid(), signal.SIGUSR1)
        >>> seen == [signal.SIGUSR1]
        True
    """
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
    """DataLoader ``worker_init_fn`` part: the worker ignores SIGTERM and SIGUSR1.

    Example:
        >>> loader = torch.utils.data.DataLoader(ds, num_workers=2,  # doctest: +SKIP
        ...                                      worker_init_fn=ignore_preemption_signals)
    """
    for sig in PREEMPT_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
