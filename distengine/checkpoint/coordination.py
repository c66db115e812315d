"""The collective steps of a save or a ``latest`` look-up, all bounded in time.

``Checkpoint.__call__`` and ``Checkpoint.latest`` must run on every rank. A program that
calls them on one rank only (``if rank == 0: handler(engine)``, Ignite's classic mistake)
would otherwise block forever in the first collective. So every such call starts with
:func:`handshake`, a store-based check (``idist.rendezvous_check``) that issues no
collective: all ranks must reach the same checkpoint operation (same kind, same
occurrence of that kind, counted per process group by ``rendezvous_check``) within ``DISTENGINE_CHECKPOINT_TIMEOUT`` seconds (default 120), or each rank
that did arrive raises :class:`CheckpointCollectiveError` saying so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from distengine import distributed as idist
from distengine.checkpoint.errors import CheckpointError

__all__ = [
    "CheckpointCollectiveError",
    "on_rank0_for_all",
    "broadcast_from",
    "gather_to_all",
    "handshake",
    "handshake_timeout",
]

TIMEOUT_ENV = "DISTENGINE_CHECKPOINT_TIMEOUT"
_DEFAULT_TIMEOUT_S = 120.0


class CheckpointCollectiveError(CheckpointError):
    """Ranks did not all take part in a checkpoint collective within the time limit."""


def handshake_timeout() -> float:
    """Seconds to wait for the other ranks (``DISTENGINE_CHECKPOINT_TIMEOUT``, default 120)."""
    raw = os.environ.get(TIMEOUT_ENV)
    if not raw:
        return _DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{TIMEOUT_ENV} must be > 0, got {value}")
    return value


def handshake(op: str, timeout: float | None = None) -> None:
    """Checks that every rank is entering the same checkpoint operation; no-op on one rank.

    Args:
        op: the operation (``"save"``, ``"latest"`` …); ranks must agree on it.
        timeout: seconds to wait; default :func:`handshake_timeout`.

    Raises:
        CheckpointCollectiveError: some rank did not arrive in time, or arrived at another
            operation.

    Example:
        >>> handshake("save")  # returns at once without a process group
    """
    world = idist.get_world_size()
    if world == 1:
        return
    timeout = handshake_timeout() if timeout is None else timeout
    tag = f"distengine/checkpoint/{op}"  # numbered per use by rendezvous_check
    rank = idist.get_rank()
    hint = (
        f"Checkpoint operations are collectives: call '{op}' on every rank (this is rank {rank} of "
        f"{world}; the limit is {timeout:g} s, set by {TIMEOUT_ENV})"
    )
    try:
        idist.rendezvous_check(tag, timeout)
    except TimeoutError as e:
        raise CheckpointCollectiveError(f"{e}. {hint}") from None


def on_rank0_for_all(op: str, compute: Callable[[], Any], what: str) -> Any:
    """Runs ``compute`` on rank 0 and returns its result on every rank (a collective).

    An exception on rank 0 becomes a :class:`CheckpointError` on every rank, so that no
    rank waits for an answer that will not come.

    Example:
        >>> on_rank0_for_all("latest", lambda: 42, "a look-up")
        42
    """
    handshake(op)
    value, error = None, None
    if idist.get_rank() == 0:
        try:
            value = compute()
        except Exception as e:
            error = f"{what} failed on rank 0: {type(e).__name__}: {e}"
    value, error = broadcast_from((value, error), src=0, what=f"checkpoint {op}")
    if error is not None:
        raise CheckpointError(error)
    return value


def broadcast_from(obj: Any, src: int, what: str = "checkpoint") -> Any:
    """``obj`` of rank ``src`` on every rank (returns ``obj`` itself on one rank)."""
    if idist.get_world_size() == 1:
        return obj
    with idist.watch_collective(f"{what}: broadcast from rank {src}"):  # for hang reports
        return idist.broadcast(obj, src=src)


def gather_to_all(obj: Any, what: str = "checkpoint") -> list[Any]:
    """``[obj of rank 0, obj of rank 1, …]`` on every rank (``[obj]`` on one rank)."""
    if idist.get_world_size() == 1:
        return [obj]
    with idist.watch_collective(f"{what}: all_gather"):  # for hang reports
        gathered = idist.all_gather(obj)
    assert len(gathered) == idist.get_world_size(), (len(gathered), idist.get_world_size())
    return list(gathered)
