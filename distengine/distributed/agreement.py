"""Cross-rank agreement on the CPU group: OR of request flags, sync checks, store rendezvous.

Under NCCL these run on the gloo side group, so the per-iteration agreement of the engine
never forces a GPU synchronisation. Each marks itself in flight for the hang watchdog
(:mod:`.hangs`): on the per-iteration path that is three attribute writes, no clock and
no syscall.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import torch
import torch.distributed as dist

from .collectives import _group
from .hangs import IN_FLIGHT, watch_collective

__all__ = ["agree_flags", "check_in_sync", "rendezvous_check"]

_flag_buf: tuple[object, torch.Tensor] | None = None  # (the runtime it belongs to, buffer)


def agree_flags(flags: int) -> int:
    """Bitwise OR of ``flags`` over all ranks, in one small CPU collective.

    Args:
        flags: a non-negative int of request bits (e.g. terminate = 1).

    Returns:
        The OR over all ranks; ``flags`` itself in a job of one.

    Raises:
        TypeError: ``flags`` is not an int.
        ValueError: ``flags`` is negative or does not fit in 63 bits.

    Example:
        >>> import distengine.distributed as idist
        >>> idist.agree_flags(0b100)  # alone; with another rank passing 0b001: 0b101
        4
    """
    if isinstance(flags, bool) or not isinstance(flags, int):
        raise TypeError(f"flags must be an int, got {type(flags).__name__}")
    if not 0 <= flags < 2**63:
        raise ValueError(f"flags must be in [0, 2**63), got {flags}")
    rt = _group()
    if rt is None:
        return flags
    global _flag_buf
    if (
        _flag_buf is None or _flag_buf[0] is not rt
    ):  # one buffer per runtime: no allocation per call
        _flag_buf = (rt, torch.zeros(1, dtype=torch.int64))
    buf = _flag_buf[1]
    buf.fill_(flags)
    w = IN_FLIGHT  # inlined watch_collective("agreement"): this runs once per iteration
    w.seq += 1
    w.name = "agreement"
    w.thread = _get_ident()
    try:
        dist.all_reduce(buf, op=dist.ReduceOp.BOR, group=rt.cpu_group)
    finally:
        w.name = None
    return int(buf.item())


_get_ident = threading.get_ident


def check_in_sync(values: tuple[int, ...], names: tuple[str, ...]) -> None:
    """Checks that every rank passes the same ``values``; raises on the first difference.

    All ranks compare with rank 0; the error names the lowest rank that differs, the
    first differing field and both values, on every rank.

    Args:
        values: integers that must be equal on all ranks (epoch, iteration, a digest …).
        names: one name per value, for the error message.

    Raises:
        RuntimeError: some rank differs from rank 0.
        ValueError: ``values`` and ``names`` differ in length.
        TypeError: a value is not an int.

    Example:
        >>> import distengine.distributed as idist
        >>> idist.check_in_sync((1, 20), ("epoch", "iteration"))
    """
    values, names = tuple(values), tuple(names)
    if len(values) != len(names):
        raise ValueError(
            f"values and names must have the same length, got {len(values)} values and {len(names)} names"
        )
    for name, v in zip(names, values):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"check_in_sync compares ints, got {name}={v!r} ({type(v).__name__})")
    rt = _group()
    if rt is None:
        return
    gathered: list[tuple[int, ...] | None] = [None] * rt.env.world_size
    # Objects, not tensors: digests may exceed int64, and ranks that diverged may even
    # pass different numbers of values.
    with watch_collective("sync check"):
        dist.all_gather_object(gathered, values, group=rt.cpu_group)
    ref = gathered[0]
    assert ref is not None
    for r, theirs in enumerate(gathered[1:], start=1):
        assert theirs is not None
        if theirs == ref:
            continue
        for i, name in enumerate(names):
            mine0 = ref[i] if i < len(ref) else "<missing>"
            other = theirs[i] if i < len(theirs) else "<missing>"
            if mine0 != other:
                raise RuntimeError(
                    f"ranks out of sync: rank {r} has {name}={other} but rank 0 has {name}={mine0} "
                    f"(seen on rank {rt.env.rank})"
                )
        raise RuntimeError(
            f"ranks out of sync: rank {r} passed {theirs}, rank 0 passed {ref} (fields {names})"
        )


def rendezvous_check(tag: str, timeout: float) -> None:
    """Waits until every rank reached ``tag``; fails in bounded time instead of hanging.

    A store-based barrier: a rank that never arrives (e.g. a collective called on rank 0
    only) makes every rank that did arrive raise after ``timeout`` seconds, naming the
    ranks that are missing and where they are. Each tag must be used once per job.

    Args:
        tag: a name unique to this call site and occurrence (e.g. ``"ckpt/3/save"``).
        timeout: seconds to wait for the other ranks.

    Raises:
        TimeoutError: not every rank reached ``tag`` within ``timeout``.
        ValueError: empty ``tag`` or non-positive ``timeout``.

    Example:
        >>> import distengine.distributed as idist
        >>> idist.rendezvous_check("setup/1", timeout=60)  # alone: returns at once
    """
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"tag must be a non-empty str, got {tag!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    rt = _group()
    if rt is None:
        return
    keys, world, rank = rt.keys, rt.env.world_size, rt.env.rank
    keys.set(f"rdv/at/{rank}", tag)
    arrived = keys.add(f"rdv/{tag}/count", 1)
    if arrived == world:
        keys.set(f"rdv/{tag}/done", "1")
        return
    try:
        with watch_collective(f"rendezvous {tag!r}"):
            keys.wait([f"rdv/{tag}/done"], timedelta(seconds=timeout))
        return
    except dist.DistStoreError:  # the wait timed out
        if keys.check([f"rdv/{tag}/done"]):
            return
    where = []
    for r in range(world):
        at = keys.get(f"rdv/at/{r}").decode() if keys.check([f"rdv/at/{r}"]) else "<nothing yet>"
        if at != tag:
            where.append(f"rank {r} is at {at!r}")
    raise TimeoutError(
        f"only {keys.add(f'rdv/{tag}/count', 0)} of {world} ranks reached {tag!r} within {timeout:g} s; "
        + ("; ".join(where) if where else "the others arrived too late")
    )
