"""Hang reports: which collective a rank waits in, where every rank is, and one report.

The per-iteration agreement and the checkpoint collectives mark themselves *in flight*
(:func:`watch_collective`, or two attribute writes on the hot path): a sequence number and a
name in a module-level object, no clock, no syscall, no extra collective. The watchdog
thread (:mod:`.watchdog`) samples that object at its poll interval; when the same
collective has been in flight for ``DISTENGINE_HANG_TIMEOUT`` seconds it asks every rank,
through the store, where it is. Each rank answers with a :func:`where_record` (rank,
host, epoch, iteration, last event fired of each running engine, the collective it waits
in, the Python stack of its engine's thread), and the rank that noticed first writes ONE
report (:func:`compose_report`) naming the ranks that did not arrive.

What an engine is doing comes from *status providers*
(:func:`register_status_provider`): callables returning a small dict, registered weakly,
so the engine package never needs ``torch.distributed``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import traceback
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = [
    "InFlight",
    "IN_FLIGHT",
    "HangError",
    "compose_report",
    "current_status",
    "register_status_provider",
    "unregister_status_provider",
    "watch_collective",
    "where_record",
]

_MAX_FRAMES = 12
_MAX_STACK_CHARS = 4000


class HangError(RuntimeError):
    """The job was ended because ranks did not reach a collective within the hang timeout."""


class InFlight:
    """The distengine collective this process waits in (written by the waiting thread).

    ``seq`` counts entries, ``name`` is the collective (``None`` when none is in flight)
    and ``thread`` the ident of the thread that entered it last. ``work`` is the pending
    work of a collective started without waiting (``agreement.start_agreement``): the rank
    waits in it only while that work has not completed (its peers have not all started
    it), wherever the rank's thread is meanwhile. The watchdog reads these fields without
    a lock: a sequence number that did not move between two polls while :meth:`waiting_in`
    stayed set means the same collective is still in flight.
    """

    __slots__ = ("name", "seq", "thread", "work")

    def __init__(self) -> None:
        self.seq = 0
        self.name: str | None = None
        self.thread: int | None = None
        self.work: Any = None

    def waiting_in(self) -> str | None:
        """The collective this process waits in, or ``None``."""
        name, work = self.name, self.work
        if name is None or (work is not None and work.is_completed()):
            return None
        return name


IN_FLIGHT = InFlight()
"""The one :class:`InFlight` of this process (process-wide on purpose: a thread waits in one
collective at a time whatever its group, and the watchdog of the process reads it)."""


@contextmanager
def watch_collective(name: str) -> Iterator[None]:
    """Marks the block as a collective the hang watchdog watches, named ``name``.

    When a block marked so on some rank has not finished within
    ``DISTENGINE_HANG_TIMEOUT`` seconds, the job ends with one hang report naming the
    ranks that did not arrive and where they are. distengine marks its per-iteration
    agreement and its checkpoint collectives; wrap your own collectives when a wait in
    them would mean a hang (not, e.g., a barrier while one rank downloads a dataset).
    Blocks do not nest: the inner one ends the mark.

    Args:
        name: what the report calls the collective.

    Example:
        >>> import distengine.distributed as idist
        >>> with idist.watch_collective("my all_reduce"):
        ...     pass
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    w = IN_FLIGHT
    w.seq += 1
    w.name = name
    w.thread = threading.get_ident()
    w.work = None
    try:
        yield
    finally:
        w.name = None


# --- status providers ----------------------------------------------------------------------
# Process-wide on purpose: engines register when they are built, often before a group
# exists, and a hang report describes the whole process. Weak references (see _ref).
_providers: list[Callable[[], Callable[[], Mapping[str, Any]] | None]] = []
_providers_lock = threading.Lock()


def _ref(
    fn: Callable[[], Mapping[str, Any]],
) -> Callable[[], Callable[[], Mapping[str, Any]] | None]:
    if hasattr(fn, "__self__") and hasattr(fn, "__func__"):
        return weakref.WeakMethod(fn)  # type: ignore[arg-type]
    try:
        return weakref.ref(fn)
    except TypeError:  # e.g. functools.partial of a builtin: keep it alive
        return lambda: fn


def register_status_provider(fn: Callable[[], Mapping[str, Any]]) -> None:
    """Adds ``fn`` to what a hang report says about this process.

    ``fn()`` returns a small dict (e.g. ``{"engine": "update", "epoch": 1, "iteration": 5,
    "last_event": "ITERATION_COMPLETED"}``) or an empty one when it has nothing to say;
    it runs on the watchdog thread, so it must only read. The reference is weak (a bound
    method does not keep its object alive). Every :class:`~distengine.engine.Engine`
    registers one.

    Args:
        fn: a callable without arguments returning a mapping.

    Raises:
        TypeError: ``fn`` is not callable.

    Example:
        >>> def status():
        ...     return {"phase": "warm-up"}
        >>> register_status_provider(status)
        >>> {"phase": "warm-up"} in current_status()
        True
        >>> unregister_status_provider(status)
    """
    if not callable(fn):
        raise TypeError(f"a status provider must be callable, got {type(fn).__name__}")
    with _providers_lock:
        _providers[:] = [r for r in _providers if r() is not None]
        _providers.append(_ref(fn))


def unregister_status_provider(fn: Callable[[], Mapping[str, Any]]) -> None:
    """Removes ``fn`` (no-op when it was not registered)."""
    with _providers_lock:
        _providers[:] = [r for r in _providers if r() is not None and r() != fn]


def current_status() -> list[dict[str, Any]]:
    """What the live providers say (non-empty answers only; a provider that raises is
    reported as such instead of breaking the report)."""
    with _providers_lock:
        live = [r() for r in _providers]
    out = []
    for fn in live:
        if fn is None:
            continue
        try:
            answer = dict(fn())
        except Exception as e:
            answer = {"status_error": f"{type(e).__name__}: {e}"}
        if answer:
            out.append(answer)
    return out


# --- where a rank is -----------------------------------------------------------------------
def _thread_stack(ident: int | None) -> tuple[str, str]:
    """(thread description, formatted stack) of ``ident``, else of the main thread."""
    frames = sys._current_frames()
    main = threading.main_thread().ident
    if ident is None or ident not in frames:
        ident = main
    frame = frames.get(ident) if ident is not None else None
    if frame is None:
        return "main thread", "<no Python frame>"
    lines = traceback.format_stack(frame)[-_MAX_FRAMES:]
    text = "".join(lines)
    if len(text) > _MAX_STACK_CHARS:
        text = "...\n" + text[-_MAX_STACK_CHARS:]
    return ("main thread" if ident == main else f"thread {ident}"), text.rstrip("\n")


def where_record(
    rank: int,
    waited: float | None = None,
    in_flight: InFlight = IN_FLIGHT,
) -> dict[str, Any]:
    """Where this process is: what a rank writes into the store for a hang report.

    Args:
        rank: this process's rank.
        waited: seconds the current collective has been in flight, as the watchdog measured.
        in_flight: the in-flight marker to read (the process's own by default).

    Example:
        >>> rec = where_record(0)
        >>> rec["rank"], rec["collective"]
        (0, None)
    """
    name = in_flight.waiting_in()
    thread_name, stack = _thread_stack(in_flight.thread)
    return {
        "rank": rank,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "engines": current_status(),
        "collective": None if name is None else {"name": name, "waited": waited},
        "thread": thread_name,
        "stack": stack,
    }


def _engines_text(engines: Sequence[Mapping[str, Any]]) -> str:
    if not engines:
        return "no running engine"
    parts = []
    for e in engines:
        fields = [f"{k} {e[k]}" for k in ("epoch", "iteration") if k in e]
        if e.get("last_event") is not None:
            fields.append(f"last event fired {e['last_event']}")
        extra = [
            f"{k}={v}"
            for k, v in e.items()
            if k not in ("engine", "epoch", "iteration", "last_event")
        ]
        label = f"engine '{e['engine']}'" if "engine" in e else "status"
        parts.append(f"{label}: " + ", ".join(fields + extra))
    return "; ".join(parts)


def compose_report(
    reporter: Mapping[str, Any],
    records: Mapping[int, Mapping[str, Any] | None],
    world_size: int,
    hang_timeout: float,
) -> tuple[str, list[int]]:
    """The one hang report of a job, and the ranks that did not arrive.

    A rank *arrived* when its record shows it waiting in the reporter's collective. The
    others (including ranks that gave no answer) are named first, each with where it is
    and, when it is not in that collective, the stack of its engine's thread.

    Args:
        reporter: the where-record of the rank that noticed the hang (it has a collective).
        records: every rank's where-record, ``None`` for a rank that did not answer.
        world_size: number of ranks.
        hang_timeout: the ``DISTENGINE_HANG_TIMEOUT`` in force.

    Returns:
        ``(report text, ranks that did not arrive)``.

    Example:
        >>> me = {"rank": 0, "host": "h", "pid": 1, "engines": [], "thread": "main thread",
        ...       "collective": {"name": "agreement", "waited": 9.0}, "stack": ""}
        >>> text, missing = compose_report(me, {0: me, 1: None}, 2, 8.0)
        >>> missing
        [1]
    """
    coll = reporter["collective"] or {}
    name = coll.get("name", "?")
    arrived, missing = [], []
    for r in range(world_size):
        rec = records.get(r)
        c = (rec or {}).get("collective")
        (arrived if c and c.get("name") == name else missing).append(r)
    waited = coll.get("waited")
    head = (
        f"hang report: rank {reporter['rank']} waited "
        + (f"{waited:.1f} s " if isinstance(waited, (int, float)) else "")
        + f"in '{name}' (DISTENGINE_HANG_TIMEOUT={hang_timeout:g} s); "
        + f"{len(missing)} of {world_size} ranks did not arrive: "
        + (", ".join(f"rank {r}" for r in missing) or "none (all arrived late)")
    )
    lines = [head]
    for r in missing + arrived:
        rec = records.get(r)
        if rec is None:
            lines.append(
                f"  rank {r}: no answer (the process is gone, or a native call holds its "
                "interpreter lock)"
            )
            continue
        where = f"  rank {r} (host {rec.get('host')}, pid {rec.get('pid')})"
        c = rec.get("collective")
        state = _engines_text(rec.get("engines") or [])
        if r in arrived:
            w = c.get("waited") if c else None
            lines.append(
                f"{where} is waiting in '{c['name']}'"
                + (f" for {w:.1f} s" if isinstance(w, (int, float)) else "")
                + f": {state}"
            )
            continue
        if c:
            lines.append(f"{where} did not arrive: it waits in '{c['name']}' instead; {state}")
        else:
            lines.append(f"{where} did not arrive: not in a distengine collective; {state}")
        lines.append(f"    {rec.get('thread', 'main thread')} of rank {r}:")
        lines.extend("    " + line for line in str(rec.get("stack", "")).splitlines())
    return "\n".join(lines), missing


def dumps(record: Mapping[str, Any]) -> str:
    """A where-record as the store keeps it."""
    return json.dumps(record, default=str)


def loads(raw: bytes) -> dict[str, Any] | None:
    """A where-record read back from the store (``None`` if unreadable)."""
    try:
        value = json.loads(raw.decode(errors="replace"))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# --- the protocol through the store ----------------------------------------------------------
HANG_AT = "hang/reporter"
"""Key set (first writer wins) by the rank that noticed the hang: it writes the report."""
_ANSWERED = "hang/answered"


def _where_key(rank: int) -> str:
    return f"hang/where/{rank}"


def claim_report(store: Any, rank: int) -> bool:
    """Tries to become the job's hang reporter; ``True`` for exactly one rank."""
    won = store.compare_set(HANG_AT, "", str(rank))
    return won.decode(errors="replace") == str(rank)


def answer(store: Any, record: Mapping[str, Any]) -> None:
    """Writes this rank's where-record and counts it as answered."""
    store.set(_where_key(int(record["rank"])), dumps(record))
    store.add(_ANSWERED, 1)


def collect(
    store: Any,
    world_size: int,
    deadline: float,
    clock: Callable[[], float],
    pause: Callable[[float], Any],
) -> dict[int, dict[str, Any] | None]:
    """Every rank's where-record, waiting until all answered or ``deadline`` (``clock()`` time)."""
    while store.add(_ANSWERED, 0) < world_size and clock() < deadline:
        pause(0.05)
    out: dict[int, dict[str, Any] | None] = {}
    for r in range(world_size):
        key = _where_key(r)
        out[r] = loads(store.get(key)) if store.check([key]) else None
    return out
