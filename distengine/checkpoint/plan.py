"""The writer's decision for one call of a handler: whether to save, under which name, what
to drop. Made on the writing rank and broadcast, so every rank does the same thing even
if scores differ slightly between ranks."""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

from distengine.checkpoint.config import CheckpointConfig
from distengine.checkpoint.identity import Identity
from distengine.checkpoint.manifest import check_file_name
from distengine.checkpoint.naming import format_score, render_filename
from distengine.checkpoint.policy import Item, should_save, with_new

__all__ = ["SavePlan", "basename", "make_plan"]


class SavePlan(NamedTuple):
    """The writer's decision for one call (picklable, broadcast to every rank)."""

    error: str | None = None  # raise this on every rank instead of saving
    previous_failed: bool = False  # the error is the previous background write's
    conflict: bool = False  # the error is a CheckpointConflictError
    save: bool = False
    filename: str = ""
    saved: tuple = ()  # the kept list after this call: (Item, ...)
    stored: tuple = ()  # (name, payload file) pairs known from storage
    remove: tuple = ()  # names to delete once the new checkpoint is committed
    replaces: bool = False  # the name is that of a kept checkpoint (saved again)
    metadata: tuple = ()  # Ignite's metadata for a save handler: basename, score_name, priority
    fields: tuple = ()  # our manifest fields, as (key, value) pairs
    identity: Identity | None = None


def basename(filename_prefix: str, name: str) -> str:
    """``"{prefix}_{name}"`` or ``name`` (Ignite's metadata ``basename``).

    Example:
        >>> basename("best", "model"), basename("", "checkpoint")
        ('best_model', 'checkpoint')
    """
    return f"{filename_prefix}_{name}" if filename_prefix else name


def make_plan(
    engine: Any,
    config: CheckpointConfig,
    saved: list[Item],
    *,
    name: str,
    fields: dict[str, Any],
    identity: Identity | None,
    stored: tuple = (),
) -> SavePlan:
    """Scores the call, then decides whether to save, under which name, and what to drop.

    Raises:
        ValueError: the score function returned something that is not a number, or the
            rendered file name is not a plain file name.
    """
    global_step = None
    if config.global_step_transform is not None:
        global_step = config.global_step_transform(engine, engine.last_event_name)
    if config.score_function is not None:
        priority = config.score_function(engine)
        if not isinstance(priority, numbers.Number):
            raise ValueError(
                f"Output of score_function should be a number, got {type(priority).__name__}"
            )
    else:
        if global_step is None:
            global_step = engine.state.iteration
        priority = global_step
    base = basename(config.filename_prefix, name)
    if not should_save(saved, priority, config.n_saved, config.greater_or_equal):
        return SavePlan(saved=tuple(saved), stored=stored, identity=identity)
    filename = render_filename(
        config.filename_pattern,
        filename_prefix=config.filename_prefix,
        name=name,
        score_name=config.score_name,
        score=format_score(priority) if config.score_function is not None else None,
        global_step=global_step,
        ext=config.ext,
    )
    try:
        check_file_name(filename, "the checkpoint file name")
    except ValueError as e:
        raise ValueError(f"Cannot save under {filename!r}: {e}") from None
    replaces = any(it.filename == filename for it in saved)
    kept, remove = with_new(saved, Item(priority, filename), config.n_saved)
    metadata = {"basename": base, "score_name": config.score_name, "priority": priority}
    manifest_fields = {
        **fields,
        **metadata,
        "filename_prefix": config.filename_prefix,
    }
    return SavePlan(
        save=True,
        filename=filename,
        saved=tuple(kept),
        stored=stored,
        remove=tuple(remove),
        replaces=replaces,
        metadata=tuple(metadata.items()),
        fields=tuple(manifest_fields.items()),
        identity=identity,
    )
