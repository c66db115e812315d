"""Small helpers Ignite scripts import from ``ignite.utils``: seeding, logging, tensors.

- :func:`manual_seed` seeds Python, torch (CPU and every CUDA device) and numpy.
- :func:`setup_logger` configures a named logger that writes on rank 0 only (defined in
  :mod:`distengine.distributed.utils`, which asks for the rank; the same function).
- :func:`convert_tensor`, :func:`apply_to_tensor`, :func:`apply_to_type` map a function
  over tensors inside nested dicts, lists, tuples and named tuples.
- :func:`to_onehot` turns class indices into one-hot indicators.
- :func:`hash_checkpoint` names a weights file after its SHA-256, as ``torch.hub`` expects.
"""

from __future__ import annotations

import collections.abc as abc
import hashlib
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from distengine.distributed.utils import setup_logger

__all__ = [
    "apply_to_tensor",
    "apply_to_type",
    "convert_tensor",
    "hash_checkpoint",
    "manual_seed",
    "setup_logger",
    "to_onehot",
]


def apply_to_type(x: Any, input_type: type | tuple[type, ...], func: Callable[[Any], Any]) -> Any:
    """Applies ``func`` to every object of ``input_type`` inside ``x``, keeping the containers.

    Mappings, lists, tuples and named tuples are rebuilt with the same type; strings and
    bytes are left as they are.

    Args:
        x: an object of ``input_type``, or a (nested) container of them.
        input_type: the type (or tuple of types) to apply ``func`` to.
        func: the function to apply.

    Raises:
        TypeError: ``x`` holds something that is neither ``input_type``, a container nor
            text.

    Example:
        >>> apply_to_type({"a": [1, 2], "b": "t"}, int, lambda v: v * 10)
        {'a': [10, 20], 'b': 't'}
    """
    if isinstance(x, input_type):
        return func(x)
    if isinstance(x, (str, bytes)):
        return x
    if isinstance(x, abc.Mapping):
        return type(x)({k: apply_to_type(v, input_type, func) for k, v in x.items()})  # type: ignore[call-arg]
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a named tuple
        return type(x)(*(apply_to_type(v, input_type, func) for v in x))
    if isinstance(x, abc.Sequence):
        return type(x)([apply_to_type(v, input_type, func) for v in x])  # type: ignore[call-arg]
    raise TypeError(
        f"expected {input_type}, or dicts, lists or tuples of it; got {type(x).__name__}"
    )


def apply_to_tensor(x: Any, func: Callable[[torch.Tensor], Any]) -> Any:
    """Applies ``func`` to every tensor inside ``x`` (see :func:`apply_to_type`).

    Example:
        >>> apply_to_tensor((torch.ones(1), [torch.zeros(1)]), lambda t: t + 1)
        (tensor([2.]), [tensor([1.])])
    """
    return apply_to_type(x, torch.Tensor, func)


def _tree_map(func: Callable[..., Any], x: Any, key: int | str | None = None) -> Any:
    """Calls ``func(leaf, key=key)`` on every leaf of nested mappings and sequences and
    rebuilds the containers around the results (named tuples included); ``key`` is the
    leaf's key or index in its container (``None`` at the top and in named tuples).

    Private: Ignite's own tests import it from ``ignite.utils``. Strings are leaves.

    Example:
        >>> _tree_map(lambda v, key: (key, v), {"a": [1, 2]})
        {'a': [(0, 1), (1, 2)]}
    """
    if isinstance(x, abc.Mapping):
        return type(x)({k: _tree_map(func, v, key=k) for k, v in x.items()})
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(_tree_map(func, v) for v in x))
    if isinstance(x, abc.Sequence) and not isinstance(x, str | bytes):
        return type(x)([_tree_map(func, v, key=i) for i, v in enumerate(x)])
    return func(x, key=key)


def convert_tensor(
    x: Any, device: str | torch.device | None = None, non_blocking: bool = False
) -> Any:
    """Moves every tensor inside ``x`` to ``device`` (nothing moves when ``device`` is None).

    Args:
        x: a tensor or a (nested) dict, list or tuple of tensors.
        device: the target device.
        non_blocking: asynchronous copy from pinned host memory to a GPU.

    Example:
        >>> batch = convert_tensor({"x": torch.ones(2), "y": torch.zeros(2)}, device="cpu")
        >>> batch["x"].device
        device(type='cpu')
    """

    def move(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, non_blocking=non_blocking) if device is not None else t

    return apply_to_tensor(x, move)


def to_onehot(indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Returns one-hot indicators of shape ``(N, num_classes, ...)`` (``uint8``) from indices of shape ``(N, ...)``.

    Args:
        indices: integer class indices, on any device (the result is on the same one).
        num_classes: number of classes.

    Raises:
        ValueError: ``num_classes`` < 1.

    Example:
        >>> to_onehot(torch.tensor([0, 2]), 3)
        tensor([[1, 0, 0],
                [0, 0, 1]], dtype=torch.uint8)
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes should be an int >= 1, got {num_classes!r}")
    shape = (indices.shape[0], num_classes, *indices.shape[1:])
    onehot = torch.zeros(shape, dtype=torch.uint8, device=indices.device)
    return onehot.scatter_(1, indices.unsqueeze(1), 1)


def manual_seed(seed: int) -> None:
    """Seeds Python's ``random``, torch (CPU and all CUDA devices) and numpy (if installed).

    The engine's own randomness (data order, per-sample augmentation seeds) comes from
    ``run(seed=...)``, not from this: call it for model initialisation and anything else
    that draws from the global generators. Seed each rank differently (``seed + rank``)
    when ranks should draw different numbers.

    Args:
        seed: the seed.

    Example:
        >>> manual_seed(42)
        >>> a = torch.rand(1); manual_seed(42)
        >>> bool(torch.rand(1) == a)
        True
    """
    random.seed(seed)
    torch.manual_seed(seed)  # every CUDA device too
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(seed)


def hash_checkpoint(checkpoint_path: str | Path, output_dir: str | Path) -> tuple[Path, str]:
    """Copies a weights file to ``output_dir/<stem>-<first 8 hex of SHA-256>.pt``.

    That name is what ``torch.hub.load_state_dict_from_url(..., check_hash=True)``
    verifies. The file is copied, not moved, so a distengine checkpoint stays complete
    next to its manifest.

    Args:
        checkpoint_path: the file to publish (a local path).
        output_dir: where to write the copy (created if needed).

    Returns:
        The path of the copy and the full SHA-256 hex digest.

    Raises:
        FileNotFoundError: ``checkpoint_path`` does not exist.

    Example:
        >>> torch.save(model.state_dict(), "best.pt")
        >>> path, digest = hash_checkpoint("best.pt", "release")
        >>> path.name == f"best-{digest[:8]}.pt"
        True
    """
    source = Path(checkpoint_path)
    if not source.is_file():
        raise FileNotFoundError(f"{source.name} does not exist in {source.parent}")
    digest = hashlib.sha256()
    with source.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    sha = digest.hexdigest()
    target_dir = Path(output_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{source.stem}-{sha[:8]}.pt"
    if target.resolve() != source.resolve():
        shutil.copyfile(source, target)
    return target, sha
