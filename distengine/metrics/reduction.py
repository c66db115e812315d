"""One collective for the declared state of many metrics.

Every metric declares which attributes hold reducible state and how they combine across
ranks (``"sum"``, ``"max"``, ``"min"``). Here those values are flattened into one float64
vector, gathered from all ranks with a single ``idist.all_gather`` and reduced column by
column, so sums, maxima and minima all come from the same gather. Counts stay exact: a
float64 holds every integer up to 2**53.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

import distengine.distributed as idist

__all__ = ["REDUCTION_OPS", "reduce_states"]

REDUCTION_OPS = frozenset({"sum", "max", "min"})


def _flatten(name: str, value: Any, owner: str) -> tuple[torch.Tensor, Any]:
    """One state value -> (float64 vector on CPU or the value's device, how to rebuild it)."""
    if isinstance(value, torch.Tensor):
        return value.detach().reshape(-1).to(torch.float64), (
            "tensor",
            value.shape,
            value.dtype,
            value.device,
        )
    if isinstance(value, bool):
        return torch.tensor([float(value)], dtype=torch.float64), ("bool",)
    if isinstance(value, int):
        return torch.tensor([float(value)], dtype=torch.float64), ("int",)
    if isinstance(value, float):
        return torch.tensor([value], dtype=torch.float64), ("float",)
    raise TypeError(
        f"{owner}.{name} is declared in _reductions, so it must be a tensor or a number, "
        f"got {type(value).__name__}"
    )


def _rebuild(flat: torch.Tensor, how: Any) -> Any:
    kind = how[0]
    if kind == "tensor":
        _, shape, dtype, device = how
        if not dtype.is_floating_point and not dtype.is_complex:
            flat = flat.round()
        return flat.to(dtype=dtype).reshape(shape).to(device)
    value = flat.item()
    if kind == "int":
        return int(round(value))
    if kind == "bool":
        return value != 0.0
    return value


def reduce_states(metrics: Sequence[Any]) -> list[dict[str, Any]] | None:
    """Reduces the declared state of ``metrics`` across ranks in one collective.

    Args:
        metrics: objects with ``_reductions`` (name -> op) and ``_reducible_state()``.

    Returns:
        ``None`` at world size 1 (nothing to do: compute from the local state); otherwise
        one dict per metric with its reduced values, typed like the local ones.

    Example:
        >>> from distengine.metrics import Accuracy, Loss
        >>> import torch
        >>> reduce_states([Accuracy(), Loss(torch.nn.functional.mse_loss)]) is None  # world size 1
        True
    """
    world_size = idist.get_world_size()
    if world_size == 1:
        return None
    device = idist.device()
    flats: list[tuple[int, str, str, torch.Tensor, Any]] = []  # (metric, attr, op, flat, how)
    for i, metric in enumerate(metrics):
        state = metric._reducible_state()
        for attr, op in metric._reductions.items():
            flat, how = _flatten(attr, state[attr], type(metric).__name__)
            flats.append((i, attr, op, flat, how))
    if any(not getattr(m, "_fixed_state_shapes", True) for m in metrics):
        flats = _agree_on_sizes(flats, metrics)
    chunks: list[torch.Tensor] = []
    layout: list[tuple[int, str, str, int, int, Any]] = []  # (metric, attr, op, start, end, how)
    offset = 0
    for i, attr, op, flat, how in flats:
        chunks.append(flat.to(device))
        layout.append((i, attr, op, offset, offset + flat.numel(), how))
        offset += flat.numel()
    results: list[dict[str, Any]] = [{} for _ in metrics]
    if offset == 0:
        return results
    packed = torch.cat(chunks)
    # Every rank packs the same declared state, so the vectors have one length: promising
    # it keeps the gather to a single collective (no size exchange).
    gathered = idist.all_gather(packed, same_shape=True)
    assert gathered.numel() == world_size * offset, (gathered.shape, world_size, offset)
    table = gathered.reshape(world_size, offset).cpu()
    reduced = {"sum": table.sum(dim=0), "max": table.amax(dim=0), "min": table.amin(dim=0)}
    for i, attr, op, start, end, how in layout:
        results[i][attr] = _rebuild(reduced[op][start:end], how)
    return results


def _agree_on_sizes(
    flats: list[tuple[int, str, str, torch.Tensor, Any]], metrics: Sequence[Any]
) -> list:
    """For metrics whose state takes its shape from the first update (``Average`` of vectors):
    a rank that saw no real sample still holds the 0-d starting value. The sizes are agreed
    once (one small extra gather at the first reduction; remembered on the metrics after
    that), and such a rank widens its value (a sum of nothing: zeros) to the agreed length,
    so the main gather stays matched on every rank."""
    dynamic = [
        (col, f)
        for col, f in enumerate(flats)
        if not getattr(metrics[f[0]], "_fixed_state_shapes", True)
    ]
    known = [
        getattr(metrics[i], "_agreed_sizes", {}).get(attr) for _, (i, attr, _, _, _) in dynamic
    ]
    if None in known:
        sizes = torch.tensor([float(f[3].numel()) for _, f in dynamic], dtype=torch.float64)
        table = (
            idist.all_gather(sizes.to(idist.device()), same_shape=True)
            .reshape(-1, len(dynamic))
            .cpu()
        )
        known = []
        for k, (_, (i, attr, _, _, _)) in enumerate(dynamic):
            column = [int(n) for n in table[:, k].tolist()]
            target = max(column)
            if any(n not in (1, target) for n in column):
                raise ValueError(
                    f"{type(metrics[i]).__name__}.{attr} has different sizes across ranks: {column}"
                )
            metrics[i].__dict__.setdefault("_agreed_sizes", {})[attr] = target
            known.append(target)
    out = list(flats)
    for (col, (i, attr, op, flat, how)), target in zip(dynamic, known):
        if flat.numel() == target:
            continue
        if flat.numel() != 1:
            raise ValueError(
                f"{type(metrics[i]).__name__}.{attr} has {flat.numel()} values, the job agreed on {target}"
            )
        how = ("tensor", torch.Size([target]), how[2], how[3]) if how[0] == "tensor" else how
        out[col] = (i, attr, op, flat.expand(target).clone(), how)
    return out
