"""A metric's state: copied out (checkpoints, ``state_dict``) and back in, and viewed.

:func:`state_views` lets ``compute()`` read prepared (reduced or local) states; both
:class:`~distengine.metrics.Metric` and the reducer of :mod:`distengine.metrics.attachment`
use it, which is why it lives here, below both.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from distengine.metrics._output import detached_copy

__all__ = ["in_state_view", "is_metric", "loaded_value", "state_value", "state_views"]


def is_metric(value: Any) -> bool:
    return hasattr(type(value), "_load_rank_state") and hasattr(type(value), "rank_state_dict")


def state_value(value: Any, where: str) -> Any:
    """A copy of one state value (tensors on the CPU; metrics as their rank state)."""
    if is_metric(value):
        return value.rank_state_dict()
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {k: state_value(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(state_value(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(
        f"{where} is of unsupported type {type(value).__name__}: metric state holds numbers, "
        "tensors, None, metrics and lists or dicts of them"
    )


def loaded_value(current: Any, saved: Any, device: torch.device) -> Any:
    """``saved`` as the new value of an attribute now holding ``current`` (metrics load in place)."""
    if is_metric(current):
        current._load_rank_state(saved)
        return current
    if isinstance(current, Mapping) and isinstance(saved, Mapping):
        return {k: loaded_value(current.get(k), v, device) for k, v in saved.items()}
    if isinstance(current, (list, tuple)) and isinstance(saved, (list, tuple)):
        if len(current) == len(saved):
            return type(current)(loaded_value(c, v, device) for c, v in zip(current, saved))
    if isinstance(saved, torch.Tensor):
        return saved.detach().to(device, copy=True)
    return detached_copy(saved, device)


# > 0 while metrics are computed from prepared (reduced or local) states: a compute()
# nested in another (a lambda of a lambda) must then not reduce again. Module-level because
# a view spans every metric computed inside it, whichever engine or reducer opened it.
_views_open = 0


@contextmanager
def state_views(
    metrics: Sequence[Any], values: Sequence[Mapping[str, Any]] | None
) -> Iterator[None]:
    """Enters ``metric._state_view(v)`` for each metric (``{}``: its own state, no collective).

    Every ``compute()`` inside reads the states as set here, without a collective.
    """
    global _views_open
    with ExitStack() as stack:
        for i, metric in enumerate(metrics):
            stack.enter_context(metric._state_view(values[i] if values is not None else {}))
        _views_open += 1
        try:
            yield
        finally:
            _views_open -= 1


def in_state_view(metric: Any) -> bool:
    """Whether ``metric`` is being computed from prepared states (no collective then)."""
    return _views_open > 0 or metric.__dict__.get("_view_depth", 0) > 0
