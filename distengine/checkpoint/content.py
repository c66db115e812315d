"""Turning objects into checkpoint content and back.

- Wrapped models are saved and loaded through the model they wrap: DDP/DataParallel's
  ``.module`` and ``torch.compile``'s ``._orig_mod``; the ``module.`` and ``_orig_mod.``
  prefixes are stripped from saved keys, so a checkpoint loads whichever way the model
  was wrapped when it was saved.
- Per-rank state (``rank_state_dict``) is kept apart from the normal ``state_dict``: the
  payload stores it under :data:`RESERVED_KEY` as a list indexed by rank.
- Content must load with ``torch.load(weights_only=True)``; :func:`check_weights_only`
  says at save time, with the path of the offending value, what would not.
- ``to_save``/``to_load`` may nest objects in lists, tuples and dicts, as in Ignite
  (``{"models": [generator, discriminator]}``): :func:`tree_state_dict` saves the same
  nesting of state dicts and :func:`apply_tree` loads it back.
- :func:`snapshot` copies state off the training tensors (to CPU) for background writes.
- Objects saved as sharded state (``checkpoint/sharded.py``) leave a *marker*
  ``{SHARDED_MARKER: key}`` in the payload where their state would be; the state itself
  is in the checkpoint's per-rank files under ``key``.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "RESERVED_KEY",
    "SHARDED_MARKER",
    "sharded_key",
    "apply_tree",
    "build_payload",
    "check_objects",
    "tree_state_dict",
    "apply_state",
    "check_weights_only",
    "has_rank_state",
    "rank_state_only",
    "local_state_dict",
    "snapshot",
    "strip_prefixes",
    "unwrap_model",
]

RESERVED_KEY = "__distengine__"
SHARDED_MARKER = "__distengine_sharded__"
_PREFIXES = ("module.", "_orig_mod.")
_SCALARS = frozenset(
    {
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
    }
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


def rank_state_only(obj: Any) -> bool:
    """Whether ``obj`` is saved through its per-rank state alone: it has no
    ``state_dict``/``load_state_dict``, or its ``state_dict`` is a collective (a metric's,
    Ignite's format) that the writing rank cannot call alone."""
    rank_state = has_rank_state(obj) or callable(getattr(obj, "load_rank_state_dict", None))
    if rank_state and getattr(obj, "state_dict_is_collective", False):
        return True
    return not (hasattr(obj, "state_dict") or hasattr(obj, "load_state_dict")) and rank_state


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


def check_objects(tree: Any, attr: str, path: str) -> None:
    """Raises ``TypeError`` unless every leaf of ``tree`` has method ``attr``.

    Leaves are objects with ``attr`` (or with per-rank state); lists, tuples and dicts
    of them are walked.

    Example:
        >>> check_objects({"m": [nn.Linear(1, 1), 3]}, "state_dict", "to_save")
        Traceback (most recent call last):
        ...
        TypeError: Object to_save['m'][1] (int) should have `state_dict` method
    """
    if (
        hasattr(tree, attr)
        or has_rank_state(tree)
        or (attr == "load_state_dict" and callable(getattr(tree, "load_rank_state_dict", None)))
    ):
        return
    if isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            check_objects(v, attr, f"{path}[{i}]")
        return
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            check_objects(v, attr, f"{path}[{k!r}]")
        return
    raise TypeError(f"Object {path} ({type(tree).__name__}) should have `{attr}` method")


def tree_state_dict(tree: Any, replace: Mapping[int, Any] | None = None) -> Any:
    """``state_dict()`` of every object of ``tree``, in the same nesting (through model
    wrappers). An object whose ``id`` is in ``replace`` gets that value instead (a
    sharded object's marker).

    Example:
        >>> sd = tree_state_dict([nn.Linear(1, 1), {"b": nn.Linear(1, 1)}])
        >>> sorted(sd[1]["b"])
        ['bias', 'weight']
    """
    if replace and id(tree) in replace:
        return replace[id(tree)]
    if hasattr(tree, "state_dict"):
        return local_state_dict(tree)
    if isinstance(tree, (list, tuple)):
        return [tree_state_dict(v, replace) for v in tree]
    if isinstance(tree, Mapping):
        return {k: tree_state_dict(v, replace) for k, v in tree.items()}
    raise TypeError(f"{type(tree).__name__} has no state_dict method")


def sharded_key(state: Any) -> str | None:
    """The key of a sharded object's state if ``state`` is its marker, else ``None``.

    Example:
        >>> sharded_key({SHARDED_MARKER: "model"}), sharded_key({"w": 1})
        ('model', None)
    """
    if isinstance(state, Mapping) and len(state) == 1 and SHARDED_MARKER in state:
        key = state[SHARDED_MARKER]
        return key if isinstance(key, str) else None
    return None


def apply_tree(
    tree: Any, state: Any, strict: bool, path: str, deferred: list | None = None
) -> None:
    """Loads ``state`` (as :func:`tree_state_dict` made it) into the objects of ``tree``.

    An object whose state is a sharded marker is appended to ``deferred`` as
    ``(object, key, path)`` for the caller to load from the sharded files.

    Raises:
        ValueError: the nesting of ``state`` does not match ``tree``, or a sharded
            marker where no ``deferred`` list was given.
    """
    key = sharded_key(state)
    if key is not None:
        if deferred is None:
            raise ValueError(
                f"{path} is sharded state, stored in the checkpoint's per-rank files: load it "
                "with Checkpoint.load_objects from the checkpoint's path or URL"
            )
        deferred.append((tree, key, path))
        return
    if hasattr(tree, "load_state_dict"):
        apply_state(tree, state, strict)
        return
    if isinstance(tree, (list, tuple)):
        if not isinstance(state, (list, tuple)) or len(state) != len(tree):
            raise ValueError(
                f"{path}: expected a list of {len(tree)} states in the checkpoint, got "
                f"{type(state).__name__}"
                + (f" of {len(state)}" if isinstance(state, (list, tuple)) else "")
            )
        for i, (obj, st) in enumerate(zip(tree, state)):
            apply_tree(obj, st, strict, f"{path}[{i}]", deferred)
        return
    if isinstance(tree, Mapping):
        if not isinstance(state, Mapping):
            raise ValueError(f"{path}: expected a mapping of states, got {type(state).__name__}")
        for k, obj in tree.items():
            if k not in state:
                raise ValueError(
                    f"Key {k!r} of {path} is not found in the checkpoint, which holds {sorted(map(str, state))}"
                )
            apply_tree(obj, state[k], strict, f"{path}[{k!r}]", deferred)
        return
    raise TypeError(f"Object {path} ({type(tree).__name__}) should have `load_state_dict` method")


def build_payload(
    states: dict[str, Any],
    rank_states: dict[str, list],
    world_size: int,
    extra: dict[str, Any],
    sharded: dict[str, Any] | None = None,
) -> Any:
    """The content of a checkpoint file.

    Ignite's layout: ``{name: state_dict}``, or, for a single object without per-rank
    state, extras or sharded state, that object's bare ``state_dict``. Per-rank state goes
    under :data:`RESERVED_KEY` as ``{"world_size": W, "rank_states": {name: [rank 0, …]}}``,
    and so does the description of sharded state (``"sharded"``).

    Example:
        >>> build_payload({"model": {"w": 1}}, {}, 1, {})
        {'w': 1}
    """
    if len(states) == 1 and not rank_states and not extra and sharded is None:
        return next(iter(states.values()))
    payload: dict[str, Any] = dict(states)
    if rank_states or sharded is not None:
        payload[RESERVED_KEY] = {
            "format_version": 1,
            "world_size": world_size,
            "rank_states": rank_states,
        }
        if sharded is not None:
            payload[RESERVED_KEY]["sharded"] = sharded
    payload.update(extra)
    return payload


def snapshot(tree: Any, reuse: Any = None) -> Any:
    """A copy of ``tree`` that shares no tensor memory with it (tensors copied to CPU).

    Later in-place updates of the training tensors do not reach the copy, which is what
    a background write needs. ``reuse`` may be an earlier snapshot that nothing uses any
    more: its tensors of the same place, shape and dtype are overwritten instead of
    allocating new memory (no page faults: the copy costs a memcpy).

    Example:
        >>> t = torch.zeros(2); s = snapshot({"w": t}); t += 1; s["w"].tolist()
        [0.0, 0.0]
        >>> snapshot({"w": t}, reuse=s)["w"] is s["w"], s["w"].tolist()
        (True, [1.0, 1.0])
    """
    if isinstance(tree, torch.Tensor):
        if (
            isinstance(reuse, torch.Tensor)
            and reuse is not tree
            and reuse.device.type == "cpu"
            and reuse.shape == tree.shape
            and reuse.dtype == tree.dtype
            and type(reuse) is type(tree)
            and reuse.is_contiguous()
        ):
            return reuse.copy_(tree.detach())
        if tree.device.type == "cpu":
            return tree.detach().clone()
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, collections.OrderedDict):
        old = reuse if isinstance(reuse, Mapping) else {}
        out = collections.OrderedDict((k, snapshot(v, old.get(k))) for k, v in tree.items())
        if hasattr(tree, "_metadata"):
            out._metadata = dict(tree._metadata)  # type: ignore[attr-defined]
        return out
    if isinstance(tree, dict):
        old = reuse if isinstance(reuse, Mapping) else {}
        return {k: snapshot(v, old.get(k)) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        old = (
            reuse
            if isinstance(reuse, (list, tuple)) and len(reuse) == len(tree)
            else [None] * len(tree)
        )
        items = [snapshot(v, r) for v, r in zip(tree, old)]
        return items if isinstance(tree, list) else tuple(items)
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
    _check_tree(tree, path, ())


def _check_tree(tree: Any, path: str, keys: tuple) -> None:
    """:func:`check_weights_only` below ``keys``; the path is spelled out only for an error
    (every save checks its state: formatting each element's path would cost more than the
    check)."""
    t = type(tree)
    if t in _SCALARS or isinstance(tree, torch.Tensor):
        return
    if t in (dict, collections.OrderedDict):
        for k, v in tree.items():
            if type(k) not in _SCALARS:
                raise TypeError(
                    f"{_spelled(path, keys)} has a key of type {type(k).__name__}; keys must "
                    "be strings or numbers"
                )
            if type(v) not in _SCALARS and not isinstance(v, torch.Tensor):
                _check_tree(v, path, (*keys, repr(k)))
        return
    if t in (list, tuple, set):
        for i, v in enumerate(tree):
            if type(v) not in _SCALARS and not isinstance(v, torch.Tensor):
                _check_tree(v, path, (*keys, str(i)))
        return
    raise TypeError(
        f"{_spelled(path, keys)} is a {t.__module__}.{t.__qualname__}, which "
        "torch.load(weights_only=True) cannot load; "
        "store tensors, lists, numbers or strings instead"
    )


def _spelled(path: str, keys: tuple) -> str:
    return path + "".join(f"[{k}]" for k in keys)
