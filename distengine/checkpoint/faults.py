"""Fault injection inside the checkpoint writer, for tests of crashes during a save.

Tests must not rely on timing luck to kill a process in the middle of a write, so the
writer calls :func:`fault_point` at each phase of a save. Nothing happens unless the
environment variable ``DISTENGINE_FAULT_INJECT`` names that phase::

    DISTENGINE_FAULT_INJECT=PHASE[:COUNT[:ACTION]]

- ``PHASE``: one of :data:`PHASES`, in the order a save goes through them:

  - ``payload_partial``: part of the payload is written (a temporary file on a local
    disk with ``atomic=True``, the final file with ``atomic=False``, an unfinished
    upload on object storage);
  - ``before_commit``: the payload is fully written and flushed, not yet renamed to its
    final name (local disk) or closed (object storage);
  - ``before_manifest``: the payload is committed, its manifest not written;
  - ``manifest_partial``: half of the manifest's bytes are written;
  - ``before_cleanup``: the manifest is committed (the checkpoint exists), nothing
    older removed yet;
  - ``before_promote``: only when the file name was in use by this handler's previous
    checkpoint, so the new one was written under a unique name (see
    ``docs/checkpoints.md``): the previous one is removed, the new one not yet copied
    to the file name;
  - ``promote_partial``: the copy under the file name exists, half of its manifest
    is written;
  - ``after_promote``: the copy under the file name is committed, the unique-name
    one not yet removed.

- ``COUNT`` (default 1): fire at the COUNT-th time this process reaches that phase, so
  that "the first save succeeds, the second is killed" needs no extra code.
- ``ACTION`` (default ``kill``): ``kill`` sends SIGKILL to this process (nothing is
  cleaned up, as after a power cut or an OOM kill); ``raise`` raises :class:`OSError`
  (a storage failure such as a full disk, which the writer must report).

The variable is read at every fault point, so a test may set it in-process. In-process
tests may also install a callable with :func:`set_fault_hook`; it is called with the
phase name at every fault point (e.g. to cut the network to an object store in the
middle of an upload) before the environment variable is looked at.

Example: make the second save of a job raise just before its manifest is written::

    DISTENGINE_FAULT_INJECT=before_manifest:2:raise torchrun --nproc_per_node=2 train.py
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

__all__ = ["FAULT_INJECT_ENV", "PHASES", "fault_point", "reset_fault_counts", "set_fault_hook"]

FAULT_INJECT_ENV = "DISTENGINE_FAULT_INJECT"
PHASES = (
    "payload_partial",
    "before_commit",
    "before_manifest",
    "manifest_partial",
    "before_cleanup",
    "before_promote",
    "promote_partial",
    "after_promote",
)
_ACTIONS = ("kill", "raise")

# Process-wide on purpose: DISTENGINE_FAULT_INJECT is read from this process's environment
# and counts the fault points this process reaches ("kill at the 2nd before_manifest"),
# whichever handler or storage reaches them; no object of a save lives that long. Tests
# reset the counts with reset_fault_counts() and remove the hook with set_fault_hook(None).
_counts: dict[str, int] = {}
_lock = threading.Lock()
_hook: Callable[[str], None] | None = None


def set_fault_hook(hook: Callable[[str], None] | None) -> None:
    """Installs (or, with None, removes) a callable run with the phase at every fault point.

    Example:
        >>> seen = []
        >>> set_fault_hook(seen.append); fault_point("before_manifest"); set_fault_hook(None)
        >>> seen
        ['before_manifest']
    """
    global _hook
    if hook is not None and not callable(hook):
        raise TypeError(
            f"Expected a callable taking the phase name, or None, got {type(hook).__name__}"
        )
    _hook = hook


def _parse(spec: str) -> tuple[str, int, str]:
    parts = spec.strip().split(":")
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"{FAULT_INJECT_ENV} must be PHASE[:COUNT[:ACTION]], got {spec!r}")
    phase = parts[0]
    if phase not in PHASES:
        raise ValueError(f"{FAULT_INJECT_ENV}: expected a phase in {PHASES}, got {phase!r}")
    try:
        count = int(parts[1]) if len(parts) > 1 else 1
    except ValueError:
        raise ValueError(
            f"{FAULT_INJECT_ENV}: COUNT must be an integer, got {parts[1]!r}"
        ) from None
    if count < 1:
        raise ValueError(f"{FAULT_INJECT_ENV}: COUNT must be >= 1, got {count}")
    action = parts[2] if len(parts) > 2 else "kill"
    if action not in _ACTIONS:
        raise ValueError(f"{FAULT_INJECT_ENV}: expected an action in {_ACTIONS}, got {action!r}")
    return phase, count, action


def fault_point(phase: str) -> None:
    """Marks that the writer reached ``phase``; kills or raises if the environment asks.

    Args:
        phase: one of :data:`PHASES`.

    Raises:
        OSError: when ``DISTENGINE_FAULT_INJECT`` selects this point with action ``raise``.

    Example:
        >>> fault_point("before_manifest")  # a no-op unless DISTENGINE_FAULT_INJECT is set
    """
    assert phase in PHASES, phase
    if _hook is not None:
        _hook(phase)
    spec = os.environ.get(FAULT_INJECT_ENV)
    if not spec:
        return
    want, count, action = _parse(spec)
    if want != phase:
        return
    with _lock:
        _counts[phase] = _counts.get(phase, 0) + 1
        reached = _counts[phase]
    if reached != count:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(f"fault injected by {FAULT_INJECT_ENV}={spec!r} at phase {phase!r}")


def reset_fault_counts() -> None:
    """Forgets how often each phase was reached (for tests that run several saves).

    Example:
        >>> reset_fault_counts()
    """
    with _lock:
        _counts.clear()
