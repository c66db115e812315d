"""Sub-groups of ranks: ``new_group`` and the ``group=`` argument of the collectives.

A collective's ``group`` is ``None`` (every rank), a list of global ranks, or a group made
by :func:`new_group`. A list is turned into a process group on first use by its members
only (torch's local synchronization), and kept for the life of the process group, so a
collective called with the same list every iteration creates the group once. A rank that
is not a member of the group takes no part: the collective returns its input unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from . import runtime

__all__ = ["Comm", "new_group", "resolve_group"]


@dataclass(frozen=True)
class Comm:
    """Where a collective runs: the process group (``None``: the default one), its size and this rank's index in it."""

    rt: runtime.Runtime
    group: Any
    size: int
    index: int


def _check_ranks(ranks: Any, world_size: int | None) -> list[int]:
    """Sorted ``ranks`` after checking types, repeats and (unless ``world_size`` is None) range."""
    if (
        isinstance(ranks, (str, bytes))
        or not isinstance(ranks, Sequence)
        or not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks)
    ):
        raise ValueError(f"Argument ranks should be list of int (global ranks), got {ranks!r}")
    bad = [r for r in ranks if r < 0 or (world_size is not None and r >= world_size)]
    if bad:
        raise ValueError(
            f"ranks should be in [0, {world_size or 'world size'}), got {bad} in {list(ranks)}"
        )
    if len(set(ranks)) != len(ranks):
        raise ValueError(f"ranks should not repeat a rank, got {list(ranks)}")
    return sorted(ranks)


def new_group(ranks: list[int], **kwargs: Any) -> Any:
    """Creates a process group of ``ranks``; every rank of the job must call it.

    In a job of one there is no process group and ``ranks`` itself is returned (as in
    Ignite). Pass the result as ``group=`` to :func:`all_reduce`, :func:`all_gather` or
    :func:`all_gather_tensors_with_shapes`; a plain list of ranks works there too.

    Args:
        ranks: global ranks of the members.
        **kwargs: passed to ``torch.distributed.new_group`` (``backend``, ``timeout``,
            ``pg_options``).

    Returns:
        The ``torch.distributed.ProcessGroup`` (``GroupMember.NON_GROUP_MEMBER`` on ranks
        outside it), or ``ranks`` in a job of one.

    Raises:
        ValueError: ``ranks`` is not a list of distinct ranks of this job.

    Example:
        >>> import distengine.distributed as idist
        >>> idist.new_group([0])  # alone: the list itself
        [0]
    """
    rt = runtime.active()
    if not isinstance(ranks, list):
        raise ValueError(f"Argument ranks should be list of int (global ranks), got {ranks!r}")
    if rt is None:
        _check_ranks(ranks, None)  # alone there is no group: any ranks go
        return ranks
    return dist.new_group(ranks=_check_ranks(ranks, rt.env.world_size), **kwargs)


def _cached_group(rt: runtime.Runtime, members: list[int]) -> Any:
    """The group of ``members``, made once per runtime (kept in ``rt.subgroups``, released at finalize)."""
    key = tuple(members)
    if key not in rt.subgroups:
        # Only the members call this (the others returned before), hence local sync.
        rt.subgroups[key] = dist.new_group(ranks=members, use_local_synchronization=True)
    return rt.subgroups[key]


def resolve_group(rt: runtime.Runtime, group: Any) -> Comm | None:
    """The group a collective runs on; ``None`` when this rank is not a member.

    Raises:
        ValueError: ``group`` is neither ``None``, a list of ranks nor a process group.
    """
    if group is None:
        return Comm(rt, None, rt.env.world_size, rt.env.rank)
    if isinstance(group, list):
        members = _check_ranks(group, rt.env.world_size)
        if rt.env.rank not in members:
            return None
        if len(members) == rt.env.world_size:
            return Comm(rt, None, rt.env.world_size, rt.env.rank)
        return Comm(rt, _cached_group(rt, members), len(members), members.index(rt.env.rank))
    if group is dist.GroupMember.NON_GROUP_MEMBER:
        return None
    if isinstance(group, dist.ProcessGroup):
        return Comm(rt, group, group.size(), group.rank())
    raise ValueError(
        "Argument group should be list of int or ProcessGroup (from new_group), or None, "
        f"got {type(group).__name__}: {group!r}"
    )


def check_group_arg(group: Any) -> None:
    """Validates ``group`` in a job of one, where it is otherwise ignored."""
    if group is None or isinstance(group, dist.ProcessGroup):
        return
    if isinstance(group, list):
        _check_ranks(group, None)  # alone there is no group: any ranks go
        return
    raise ValueError(
        "Argument group should be list of int or ProcessGroup (from new_group), or None, "
        f"got {type(group).__name__}: {group!r}"
    )


def rank_not_in_group(group: Any) -> bool:
    """Returns whether this rank is outside ``group`` (``False`` for ``None`` and in a job of one).

    Example:
        >>> rank_not_in_group(None)
        False
    """
    if group is None:
        return False
    rt = runtime.active()
    if rt is None or rt.env.world_size == 1:
        return False
    return resolve_group(rt, group) is None
