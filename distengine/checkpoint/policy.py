"""Retention: which checkpoints a handler keeps, by Ignite's rules.

Checkpoints are ranked by priority (the score, or the global step when there is no
score); the lowest goes first. A new checkpoint is written while fewer than ``n_saved``
are kept, or when its priority beats the lowest kept one (``>`` or, with
``greater_or_equal``, ``>=``). A new checkpoint with the name of a kept one replaces it.
A NaN priority ranks below every number: it is written only while there is room, it is
the first to go, and it never blocks a later save.

Example:
    >>> kept, dropped = with_new([Item(float("nan"), "m_nan.pt")], Item(0.5, "m_0.5.pt"), 1)
    >>> kept, dropped
    ([Item(priority=0.5, filename='m_0.5.pt')], ['m_nan.pt'])
"""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = ["Item", "rank", "should_save", "with_new"]


class Item(NamedTuple):
    """A kept checkpoint: its priority and (logical) file name."""

    priority: float
    filename: str


def rank(priority: float) -> tuple[int, float]:
    """Sort key of a priority: NaN below every number (``-inf`` included).

    Example:
        >>> sorted([1.0, float("nan"), -math.inf], key=rank)
        [nan, -inf, 1.0]
    """
    if isinstance(priority, float) and math.isnan(priority):
        return (0, 0.0)
    return (1, priority)


def should_save(
    saved: list[Item], priority: float, n_saved: int | None, greater_or_equal: bool
) -> bool:
    """Whether a checkpoint of ``priority`` is written, given the kept ``saved`` (sorted).

    Example:
        >>> should_save([Item(0.5, "a.pt")], 0.5, 1, greater_or_equal=False)
        False
        >>> should_save([Item(float("nan"), "a.pt")], 0.1, 1, greater_or_equal=False)
        True
    """
    if n_saved is None or len(saved) < n_saved:
        return True
    new, lowest = rank(priority), rank(saved[0].priority)
    return new >= lowest if greater_or_equal else new > lowest


def with_new(saved: list[Item], item: Item, n_saved: int | None) -> tuple[list[Item], list[str]]:
    """The kept list once ``item`` is added, and the file names that drop out of it.

    Example:
        >>> with_new([Item(1, "c_1.pt"), Item(2, "c_2.pt")], Item(3, "c_3.pt"), 2)
        ([Item(priority=2, filename='c_2.pt'), Item(priority=3, filename='c_3.pt')], ['c_1.pt'])
    """
    kept = [it for it in saved if it.filename != item.filename]  # same name: replaced
    kept.append(item)
    kept.sort(key=lambda it: rank(it.priority))  # stable: among equals, older first
    removed = []
    while n_saved is not None and len(kept) > n_saved:
        removed.append(kept.pop(0).filename)
    return kept, removed
