"""Copying a metric's state values out (checkpoints, ``state_dict``) and back in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from distengine.metrics._output import detached_copy

__all__ = ["state_value", "loaded_value"]


def _is_metric(value: Any) -> bool:
    return hasattr(type(value), "_load_rank_state") and hasattr(type(value), "rank_state_dict")


def state_value(value: Any, where: str) -> Any:
    """A copy of one state value (tensors on the CPU; metrics as their rank state)."""
    if _is_metric(value):
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
    if _is_metric(current):
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
