"""A checkpoint handler's settings, checked once when the handler is built."""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from distengine import distributed as idist
from distengine.checkpoint.content import RESERVED_KEY, check_objects
from distengine.checkpoint.identity import handler_key
from distengine.checkpoint.naming import check_filename_prefix, check_pattern

__all__ = ["CheckpointConfig", "check_to_save", "default_score_fn"]


def default_score_fn(metric_name: str, score_sign: float = 1.0) -> Callable[[Any], float]:
    """A score function: ``score_sign * engine.state.metrics[metric_name]``
    (``Checkpoint.get_default_score_fn``).

    Example:
        >>> neg_loss = default_score_fn("loss", -1.0)
    """
    if score_sign not in (1.0, -1.0):
        raise ValueError(f"Argument score_sign should be 1 or -1, got {score_sign!r}")
    return lambda engine: score_sign * engine.state.metrics[metric_name]


@dataclass(frozen=True)
class CheckpointConfig:
    """What a ``Checkpoint`` saves, under which names, and how many it keeps.

    Checked in the constructor: a setting that cannot work raises ``TypeError`` or
    ``ValueError`` saying what was expected, before anything runs. With ``score_name``
    alone, the score is ``engine.state.metrics[score_name]``.

    Example:
        >>> CheckpointConfig(n_saved=0)
        Traceback (most recent call last):
        ...
        ValueError: n_saved must be a positive integer or None, got 0
    """

    filename_prefix: str = ""
    score_function: Callable[[Any], float] | None = None
    score_name: str | None = None
    n_saved: int | None = 1
    global_step_transform: Callable[[Any, Any], int] | None = None
    filename_pattern: str | None = None
    include_self: bool = False
    greater_or_equal: bool = False
    save_on_rank: int = 0
    async_save: bool = False
    sharded: bool = False
    ext: str = "pt"

    def __post_init__(self) -> None:
        check_filename_prefix(self.filename_prefix)
        if self.score_function is not None and not callable(self.score_function):
            raise TypeError(
                f"score_function should be a function, got {type(self.score_function).__name__}"
            )
        if self.score_name is not None and not isinstance(self.score_name, str):
            raise TypeError(
                f"score_name should be a str or None, got {type(self.score_name).__name__}"
            )
        if self.score_name is not None and self.score_function is None:
            object.__setattr__(self, "score_function", default_score_fn(self.score_name))
        if self.n_saved is not None and (
            isinstance(self.n_saved, bool) or not isinstance(self.n_saved, int) or self.n_saved < 1
        ):
            raise ValueError(f"n_saved must be a positive integer or None, got {self.n_saved!r}")
        if self.global_step_transform is not None and not callable(self.global_step_transform):
            raise TypeError(
                "global_step_transform should be a function, got "
                f"{type(self.global_step_transform).__name__}"
            )
        if self.filename_pattern is not None:
            check_pattern(self.filename_pattern, self.filename_prefix, ext=self.ext)
        for flag in ("include_self", "greater_or_equal", "async_save", "sharded"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} should be a bool, got {getattr(self, flag)!r}")
        world = idist.get_world_size()
        rank = self.save_on_rank
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world:
            raise ValueError(f"save_on_rank must be a rank in [0, {world}), got {rank!r}")

    def handler_key(self, basename: str, names: list[str]) -> str:
        """The key that identifies this handler's checkpoints across restarts (see
        :mod:`~distengine.checkpoint.identity`)."""
        return handler_key(
            {
                "basename": basename,
                "score_name": self.score_name,
                "pattern": self.filename_pattern,
                "n_saved": self.n_saved,
                "greater_or_equal": self.greater_or_equal,
                "include_self": self.include_self,
                "scored": self.score_function is not None,
                "stepped": self.global_step_transform is not None,
                "objects": sorted(map(str, names)),
                "ext": self.ext,
            }
        )


def check_to_save(to_save: Any, include_self: bool, allow_empty: bool = False) -> None:
    """Checks ``Checkpoint``'s ``to_save``; raises ``TypeError``/``ValueError`` saying what is wrong.

    Example:
        >>> check_to_save({}, include_self=False)
        Traceback (most recent call last):
        ...
        ValueError: Argument `to_save` is empty: give the objects to save, e.g. {"model": model, "trainer": trainer}
    """
    if not isinstance(to_save, Mapping):
        raise TypeError(
            f"Argument `to_save` should be a dictionary, but given {type(to_save).__name__}"
        )
    if not to_save and not allow_empty:
        raise ValueError(
            'Argument `to_save` is empty: give the objects to save, e.g. {"model": model, '
            '"trainer": trainer}'
        )
    for key in to_save:
        if not isinstance(key, str):
            raise TypeError(f"Keys of `to_save` should be strings, got {key!r}")
    check_objects(to_save, "state_dict", "to_save")
    if RESERVED_KEY in to_save:
        raise ValueError(
            f"The key {RESERVED_KEY!r} is reserved for per-rank state; rename that object"
        )
    if include_self and not isinstance(to_save, MutableMapping):
        raise TypeError(
            "If `include_self` is True, then `to_save` must be mutable, but given "
            f"{type(to_save).__name__}"
        )
    if include_self and "checkpointer" in to_save:
        raise ValueError(
            f"Cannot have key 'checkpointer' if `include_self` is True: keys are {list(to_save)}"
        )
