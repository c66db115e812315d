"""Turning objects into checkpoint content and back.

- Wrapped models are saved and loaded through the model they wrap: DDP/DataParallel's
  ``.module`` and ``torch.compile``'s ``._orig_mod``; the ``module.`` and ``_orig_mod.``
  prefixes are stripped from saved keys, so a checkpoint loads whichever way the model
  was wrapped when it was saved.
- Per-rank state (``rank_state_dict``) is kept apart from the normal ``state_dict``: the
  payload stores it under :data:`RESERVED_KEY` as a list indexed by rank.
- Content must load with ``torch.load(weights_only=True)``; :func:`check_weights_only`
  says at save time, with the path of the offending value, what would not.
- :func:`snapshot` copies state off the training tensors (to CPU) for background writes.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "RESERVED_KEY",
    "build_payload",
    "apply_state",
    "check_weights_only",
    "has_rank_state",
    "local_state_dict",
    "snapshot",
    "strip_prefixes",
    "unwrap_model",
]

RESERVED_KEY = "__distengine__"
_PREFIXES = ("module.", "_orig_mod.")
_SCALARS = (
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    type(None),
    torch.dtype,
    torch.device,
    torch.Size,
)


def unwrap_model(obj: Any) -> Any:
    """The model inside DDP/DataParallel and ``torch.compile`` wrappers (any nesting).

    Example:
        >>> m = nn.Linear(2, 2)
        >>> unwrap_model(nn.DataParallel(m)) is m
        True
    """
    while True:
        if isinstance(obj, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            obj = obj.module
        elif isinstance(obj, nn.Module) and isinstance(getattr(obj, "_orig_mod", None), nn.Module):
            obj = obj._orig_mod
        else:
            return obj


def has_rank_state(obj: Any) -> bool:
    """Whether ``obj`` contributes per-rank state (has a callable ``rank_state_dict``)."""
    return callable(getattr(obj, "rank_state_dict", None))


def local_state_dict(obj: Any) -> Any:
    """``state_dict()`` of ``obj``, through any model wrapper."""
    return unwrap_model(obj).state_dict()


def strip_prefixes(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """Removes leading ``module.`` / ``_orig_mod.`` (repeated) from every key.

    Example:
        >>> list(strip_prefixes({"_orig_mod.module.fc.weight": 0}))
        ['fc.weight']
    """
    if not any(isinstance(k, str) and k.startswith(_PREFIXES) for k in state_dict):
        return state_dict
    out = collections.OrderedDict()
    for key, value in state_dict.items():
        while isinstance(key, str) and key.startswith(_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    meta = getattr(state_dict, "_metadata", None)
    if meta is not None:
        out._metadata = {_strip_key(k): v for k, v in meta.items()}  # type: ignore[attr-defined]
    return out


def _strip_key(key: str) -> str:
    while key.startswith(_PREFIXES) or key in ("module", "_orig_mod"):
        key = key.split(".", 1)[1] if "." in key else ""
    return key


def apply_state(obj: Any, state: Any, strict: bool) -> None:
    """``obj.load_state_dict(state)``, unwrapping models and stripping key prefixes.

    Args:
        obj: the object to restore.
        state: what its ``state_dict`` was.
        strict: passed to ``nn.Module.load_state_dict`` (ignored for other objects).
    """
    target = unwrap_model(obj)
    if isinstance(target, nn.Module):
        if not isinstance(state, Mapping):
            raise TypeError(
                f"Expected a state_dict mapping for {type(target).__name__}, got {type(state).__name__}"
            )
        target.load_state_dict(strip_prefixes(state), strict=strict)
    else:
        target.load_state_dict(state)


def build_payload(
    states: dict[str, Any], rank_states: dict[str, list], world_size: int, extra: dict[str, Any]
) -> Any:
    """The content of a checkpoint file.

    Ignite's layout: ``{name: state_dict}``, or, for a single object without per-rank
    state or extras, that object's bare ``state_dict``. Per-rank state goes under
    :data:`RESERVED_KEY` as ``{"world_size": W, "rank_states": {name: [rank 0, …]}}``.

    Example:
        >>> build_payload({"model": {"w": 1}}, {}, 1, {})
        {'w': 1}
    """
    if len(states) == 1 and not rank_states and not extra:
        return next(iter(states.values()))
    payload: dict[str, Any] = dict(states)
    if rank_states:
        payload[RESERVED_KEY] = {
            "format_version": 1,
            "world_size": world_size,
            "rank_states": rank_states,
        }
    payload.update(extra)
    return payload


def snapshot(tree: Any) -> Any:
    """A copy of ``tree`` that shares no tensor memory with it (tensors cloned to CPU).

    Later in-place updates of the training tensors do not reach the copy, which is what
    a background write needs.

    Example:
        >>> t = torch.zeros(2); s = snapshot({"w": t}); t += 1; s["w"].tolist()
        [0.0, 0.0]
    """
    if isinstance(tree, torch.Tensor):
        if tree.device.type == "cpu":
            return tree.detach().clone()
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, collections.OrderedDict):
        out = collections.OrderedDict((k, snapshot(v)) for k, v in tree.items())
        if hasattr(tree, "_metadata"):
            out._metadata = dict(tree._metadata)  # type: ignore[attr-defined]
        return out
    if isinstance(tree, dict):
        return {k: snapshot(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [snapshot(v) for v in tree]
    if isinstance(tree, tuple):
        return tuple(snapshot(v) for v in tree)
    if isinstance(tree, set):
        return set(tree)
    return tree


def check_weights_only(tree: Any, path: str = "checkpoint") -> None:
    """Raises ``TypeError`` naming the first value ``torch.load(weights_only=True)`` refuses.

    Allowed: tensors, ``dict``/``OrderedDict`` (not subclasses such as ``defaultdict``),
    lists, tuples, sets, numbers, strings, bytes, ``None``, dtypes, devices, sizes.

    Example:
        >>> check_weights_only({"rng": [1, 2], "w": torch.zeros(1)})
        >>> import numpy as np
        >>> check_weights_only({"x": np.zeros(1)})
        Traceback (most recent call last):
        ...
        TypeError: checkpoint['x'] is a numpy.ndarray, which torch.load(weights_only=True) cannot load; store tensors, lists, numbers or strings instead
    """
    t = type(tree)
    if isinstance(tree, torch.Tensor) or t in _SCALARS:
        return
    if t in (dict, collections.OrderedDict):
        for k, v in tree.items():
            if type(k) not in _SCALARS:
                raise TypeError(
                    f"{path} has a key of type {type(k).__name__}; keys must be strings or numbers"
                )
            check_weights_only(v, f"{path}[{k!r}]")
        return
    if t in (list, tuple, set):
        for i, v in enumerate(tree):
            check_weights_only(v, f"{path}[{i}]")
        return
    raise TypeError(
        f"{path} is a {t.__module__}.{t.__qualname__}, which torch.load(weights_only=True) cannot load; "
        "store tensors, lists, numbers or strings instead"
    )
