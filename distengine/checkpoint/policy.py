"""What one call of a ``Checkpoint`` saves and keeps, by Ignite's rules.

Checkpoints are ranked by priority (the score, or the global step when there is no
score); the lowest goes first. A new checkpoint is written while fewer than ``n_saved``
are kept, or when its priority beats the lowest kept one (``>`` or, with
``greater_or_equal``, ``>=``). A new checkpoint with the name of a kept one replaces it.

The decision is made on the writing rank and broadcast as a :class:`SavePlan`, so that
every rank does the same thing even if scores differ slightly between ranks.
"""

from __future__ import annotations

import inspect
import numbers
import os
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, NamedTuple

from distengine import distributed as idist
from distengine.checkpoint.naming import format_score, render_filename
from distengine.checkpoint.state import RESERVED_KEY, has_rank_state

__all__ = [
    "Item",
    "SavePlan",
    "basename",
    "check_arguments",
    "decide_save",
    "should_save",
    "with_new",
]


class Item(NamedTuple):
    """A kept checkpoint: its priority and payload file name."""

    priority: float
    filename: str


def basename(filename_prefix: str, name: str) -> str:
    """``"{prefix}_{name}"`` or ``name`` (Ignite's metadata ``basename``).

    Example:
        >>> basename("best", "model"), basename("", "checkpoint")
        ('best_model', 'checkpoint')
    """
    return f"{filename_prefix}_{name}" if filename_prefix else name


def should_save(
    saved: list[Item], priority: float, n_saved: int | None, greater_or_equal: bool
) -> bool:
    """Whether a checkpoint of ``priority`` is written, given the kept ``saved`` (sorted).

    Example:
        >>> should_save([Item(0.5, "a.pt")], 0.5, 1, greater_or_equal=False)
        False
    """
    if n_saved is None or len(saved) < n_saved:
        return True
    lowest = saved[0].priority
    return priority >= lowest if greater_or_equal else priority > lowest


def with_new(saved: list[Item], item: Item, n_saved: int | None) -> tuple[list[Item], list[str]]:
    """The kept list once ``item`` is added, and the file names that drop out of it.

    Example:
        >>> with_new([Item(1, "c_1.pt"), Item(2, "c_2.pt")], Item(3, "c_3.pt"), 2)
        ([Item(priority=2, filename='c_2.pt'), Item(priority=3, filename='c_3.pt')], ['c_1.pt'])
    """
    kept = [it for it in saved if it.filename != item.filename]  # same name: overwritten
    kept.append(item)
    kept.sort(key=lambda it: it.priority)  # stable: among equals, older first
    removed = []
    while n_saved is not None and len(kept) > n_saved:
        removed.append(kept.pop(0).filename)
    return kept, removed


class SavePlan(NamedTuple):
    """The writer's decision for one call (picklable, broadcast to every rank)."""

    error: str | None = None  # raise this on every rank instead of saving
    previous_failed: bool = False  # the error is the previous background write's
    save: bool = False
    filename: str = ""
    saved: tuple = ()  # the kept list after this call: (Item, ...)
    remove: tuple = ()  # file names to delete once the new checkpoint is committed
    fields: tuple = ()  # manifest fields, as (key, value) pairs


def decide_save(
    engine: Any,
    saved: list[Item],
    *,
    name: str,
    filename_prefix: str,
    score_function: Callable[[Any], float] | None,
    score_name: str | None,
    global_step_transform: Callable | None,
    filename_pattern: str | None,
    n_saved: int | None,
    greater_or_equal: bool,
    ext: str,
    manifest_fields: Mapping[str, Any],
) -> SavePlan:
    """Scores the call, then decides whether to save, under which name, and what to drop.

    Raises:
        ValueError: the score function returned something that is not a number.
    """
    global_step = None
    if global_step_transform is not None:
        global_step = global_step_transform(engine, engine.last_event_name)
    if score_function is not None:
        priority = score_function(engine)
        if not isinstance(priority, numbers.Number):
            raise ValueError(
                f"Output of score_function should be a number, got {type(priority).__name__}"
            )
    else:
        if global_step is None:
            global_step = engine.state.iteration
        priority = global_step
    if not should_save(saved, priority, n_saved, greater_or_equal):
        return SavePlan(saved=tuple(saved))
    filename = render_filename(
        filename_pattern,
        filename_prefix=filename_prefix,
        name=name,
        score_name=score_name,
        score=format_score(priority) if score_function is not None else None,
        global_step=global_step,
        ext=ext,
    )
    kept, remove = with_new(saved, Item(priority, filename), n_saved)
    fields = {
        **manifest_fields,
        "basename": basename(filename_prefix, name),
        "score_name": score_name,
        "priority": priority,
        "filename_prefix": filename_prefix,
    }
    return SavePlan(None, False, True, filename, tuple(kept), tuple(remove), tuple(fields.items()))


def check_arguments(
    to_save: Any,
    save_handler: Any,
    n_saved: Any,
    global_step_transform: Any,
    include_self: bool,
    save_on_rank: Any,
) -> None:
    """Checks ``Checkpoint``'s arguments; raises ``TypeError``/``ValueError`` saying what is wrong.

    Example:
        >>> check_arguments({"m": [1]}, "/ckpt", 1, None, False, 0)
        Traceback (most recent call last):
        ...
        TypeError: Object 'm' (list) should have a `state_dict` method
    """
    if not isinstance(to_save, Mapping):
        raise TypeError(
            f"Argument `to_save` should be a dictionary, but given {type(to_save).__name__}"
        )
    for key, obj in to_save.items():
        if not (hasattr(obj, "state_dict") or has_rank_state(obj)):
            raise TypeError(
                f"Object {key!r} ({type(obj).__name__}) should have a `state_dict` method"
            )
    if RESERVED_KEY in to_save:
        raise ValueError(
            f"The key {RESERVED_KEY!r} is reserved for per-rank state; rename that object"
        )
    if include_self and not isinstance(to_save, MutableMapping):
        raise TypeError(
            f"If `include_self` is True, `to_save` must be mutable, but given {type(to_save).__name__}"
        )
    if include_self and "checkpointer" in to_save:
        raise ValueError(
            f"Cannot have key 'checkpointer' if `include_self` is True: keys are {list(to_save)}"
        )
    if not isinstance(save_handler, (str, os.PathLike)) and not callable(save_handler):
        raise TypeError(
            "Argument `save_handler` should be a directory path/URL, a DiskSaver or a callable, "
            f"but given {type(save_handler).__name__}"
        )
    if global_step_transform is not None and not callable(global_step_transform):
        raise TypeError(
            f"global_step_transform should be a function, got {type(global_step_transform).__name__}"
        )
    if n_saved is not None and (
        isinstance(n_saved, bool) or not isinstance(n_saved, int) or n_saved < 1
    ):
        raise ValueError(f"n_saved must be a positive integer or None, got {n_saved!r}")
    world = idist.get_world_size()
    if (
        isinstance(save_on_rank, bool)
        or not isinstance(save_on_rank, int)
        or not 0 <= save_on_rank < world
    ):
        raise ValueError(f"save_on_rank must be a rank in [0, {world}), got {save_on_rank!r}")


def describe_error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def takes_metadata(fn: Callable) -> bool:
    """Whether a save-handler callable takes Ignite's ``metadata`` third argument."""
    try:
        inspect.signature(fn).bind(None, None, None)
    except TypeError:
        return False
    except ValueError:  # no signature available: assume the full form
        return True
    return True


def store_with_handler(handler: Any, takes_meta: bool, plan: SavePlan, payload: Any) -> None:
    """Writes ``payload`` through a save handler (ours, or Ignite's callable forms), then
    removes what retention dropped."""
    if takes_meta:
        handler(payload, plan.filename, dict(plan.fields))
    else:
        handler(payload, plan.filename)  # a callable of Ignite's two-argument form
    remove = getattr(handler, "remove", None)
    if callable(remove):
        for filename in plan.remove:
            remove(filename)


def default_score_fn(metric_name: str, score_sign: float = 1.0) -> Callable[[Any], float]:
    """A score function: ``score_sign * engine.state.metrics[metric_name]``
    (``Checkpoint.get_default_score_fn``).

    Example:
        >>> neg_loss = default_score_fn("loss", -1.0)
    """
    if score_sign not in (1.0, -1.0):
        raise ValueError(f"Argument score_sign should be 1 or -1, got {score_sign!r}")
    return lambda engine: score_sign * engine.state.metrics[metric_name]
