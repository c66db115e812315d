"""One collective for the declared state of many metrics.

Every metric declares which attributes hold reducible state and how they combine across
ranks: ``"sum"``, ``"max"``, ``"min"``, ``"prod"``, ``"mean"`` (the mean over ranks) or
``"cat"`` (the ranks' rows concatenated in rank order). The values are flattened into one
float64 vector, gathered from all ranks with a single ``idist.all_gather`` and reduced
column by column, so every op comes from the same gather. Counts stay exact: a float64
holds every integer up to 2**53.

Sizes. The gather needs one vector length on every rank, so the layout must be known on
every rank without asking. It is for state whose shape is fixed when the metric is built
(the common case: counts, sums, a confusion matrix) and for state shaped by the first
update once every rank has updated (every rank runs every iteration, and a rank whose
batch is all padding still updates with zero rows when the metric allows it). Two kinds of
state need the sizes first, in one small extra gather shared by all of them: ``"cat"``
state (each rank holds its own number of rows) and data-shaped state that some rank has
not shaped yet (the sizes agreed are then remembered on the metric).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

import distengine.distributed as idist

__all__ = ["REDUCTION_OPS", "reduce_states"]

REDUCTION_OPS = frozenset({"sum", "max", "min", "prod", "mean", "cat"})

_DTYPES = (
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
)
_MAX_TRAILING = 6  # dimensions after the first of a "cat" state
_CAT_HEADER = 3 + _MAX_TRAILING  # rows, dtype code, trailing ndim, trailing dims


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


def _rows_of(name: str, value: Any, owner: str) -> torch.Tensor | None:
    """A "cat" state (a tensor, or a list of tensors) as one tensor of rows; ``None`` if empty."""
    parts = value if isinstance(value, (list, tuple)) else [value]
    rows = []
    for part in parts:
        if not isinstance(part, torch.Tensor):
            raise TypeError(
                f"{owner}.{name} is a 'cat' state, so it must hold tensors, got {type(part).__name__}"
            )
        rows.append(part.detach().reshape(1) if part.ndim == 0 else part.detach())
    rows = [r for r in rows if r.numel() > 0 or r.ndim > 1]
    if not rows:
        return None
    joined = torch.cat(rows, dim=0)
    if joined.ndim - 1 > _MAX_TRAILING:
        raise ValueError(
            f"{owner}.{name}: 'cat' states of at most {_MAX_TRAILING + 1} dimensions are "
            f"supported, got {joined.ndim}"
        )
    return joined


def _cat_header(rows: torch.Tensor | None) -> list[float]:
    if rows is None:
        return [0.0, -1.0, 0.0] + [0.0] * _MAX_TRAILING
    code = _DTYPES.index(rows.dtype) if rows.dtype in _DTYPES else 1  # others travel as float64
    trailing = list(rows.shape[1:])
    return [float(rows.shape[0]), float(code), float(len(trailing))] + [
        float(d) for d in trailing + [0] * (_MAX_TRAILING - len(trailing))
    ]


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
        one dict per metric with its reduced values, typed like the local ones (a "cat"
        state becomes one tensor of all ranks' rows).

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
    fixed: list[tuple[int, str, str, torch.Tensor, Any]] = []  # (metric, attr, op, flat, how)
    cats: list[tuple[int, str, torch.Tensor | None, Any]] = []  # (metric, attr, rows, device)
    for i, metric in enumerate(metrics):
        state = metric._reducible_state()
        owner = type(metric).__name__
        for attr, op in metric._reductions.items():
            if op == "cat":
                value = state[attr]
                dev = value.device if isinstance(value, torch.Tensor) else None
                cats.append((i, attr, _rows_of(attr, value, owner), dev))
            else:
                flat, how = _flatten(attr, state[attr], owner)
                fixed.append((i, attr, op, flat, how))
    dynamic = [
        col
        for col, (i, attr, _, _, _) in enumerate(fixed)
        if not getattr(metrics[i], "_fixed_state_shapes", True)
        and not metrics[i]._state_shaped()
        and attr not in metrics[i].__dict__.get("_agreed_sizes", {})
    ]
    cat_table = None
    if dynamic or cats:
        fixed, cat_table = _exchange_sizes(fixed, dynamic, cats, metrics)
    for col, (i, attr, op, flat, how) in enumerate(fixed):
        agreed = metrics[i].__dict__.get("_agreed_sizes", {}).get(attr)
        if agreed is not None and flat.numel() != agreed:
            fixed[col] = _widen(i, attr, op, flat, how, agreed, metrics)

    chunks: list[torch.Tensor] = []
    layout: list[tuple[int, str, str, int, int, Any]] = []  # (metric, attr, op, start, end, how)
    offset = 0
    for i, attr, op, flat, how in fixed:
        chunks.append(flat.to(device))
        layout.append((i, attr, op, offset, offset + flat.numel(), how))
        offset += flat.numel()
    cat_layout: list[tuple[int, str, int, Any]] = []
    for k, (_, attr, rows, dev) in enumerate(cats):
        counts, code, trailing = cat_table[k]  # type: ignore[index]
        width = max(counts) * _numel(trailing)
        buf = torch.zeros(width, dtype=torch.float64, device=device)
        if rows is not None:
            buf[: rows.numel()] = rows.reshape(-1).to(device, torch.float64)
        chunks.append(buf)
        cat_layout.append((k, attr, offset, dev))
        offset += width
    results: list[dict[str, Any]] = [{} for _ in metrics]
    if offset == 0:
        return results
    packed = torch.cat(chunks)
    # Every rank packs the same layout, so the vectors have one length: promising it keeps
    # the gather to a single collective (no size exchange).
    gathered = idist.all_gather(packed, same_shape=True)
    assert gathered.numel() == world_size * offset, (gathered.shape, world_size, offset)
    table = gathered.reshape(world_size, offset).cpu()
    for i, attr, op, start, end, how in layout:
        results[i][attr] = _rebuild(_reduce(table[:, start:end], op), how)
    for k, attr, start, dev in cat_layout:
        i = cats[k][0]
        counts, code, trailing = cat_table[k]  # type: ignore[index]
        per_row = _numel(trailing)
        parts = [table[r, start : start + counts[r] * per_row] for r in range(world_size)]
        joined = torch.cat(parts).reshape(-1, *trailing)
        dtype = _DTYPES[code] if code >= 0 else torch.float32
        if not dtype.is_floating_point:
            joined = joined.round()
        results[i][attr] = joined.to(dtype).to(dev if dev is not None else "cpu")
    return results


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _reduce(columns: torch.Tensor, op: str) -> torch.Tensor:
    if op == "sum":
        return columns.sum(dim=0)
    if op == "max":
        return columns.amax(dim=0)
    if op == "min":
        return columns.amin(dim=0)
    if op == "prod":
        return columns.prod(dim=0)
    return columns.mean(dim=0)  # "mean": the mean over ranks


def _exchange_sizes(
    fixed: list[tuple[int, str, str, torch.Tensor, Any]],
    dynamic: list[int],
    cats: list[tuple[int, str, torch.Tensor | None, Any]],
    metrics: Sequence[Any],
) -> tuple[list, list[tuple[list[int], int, list[int]]]]:
    """The one extra (small) gather: sizes of data-shaped states not yet agreed and of
    "cat" states. Data-shaped sizes are remembered on the metric (``_agreed_sizes``); a
    rank that saw no real sample still holds the 0-d starting value and widens it (a sum
    of nothing: zeros) to the agreed length, so the main gather stays matched."""
    header: list[float] = [float(fixed[col][3].numel()) for col in dynamic]
    for _, _, rows, _ in cats:
        header.extend(_cat_header(rows))
    mine = torch.tensor(header, dtype=torch.float64)
    world_size = idist.get_world_size()
    table = (
        idist.all_gather(mine.to(idist.device()), same_shape=True)
        .reshape(world_size, len(header))
        .cpu()
        .long()
        .tolist()
    )
    for k, col in enumerate(dynamic):
        i, attr = fixed[col][0], fixed[col][1]
        column = [row[k] for row in table]
        target = max(column)
        if any(n not in (1, target) for n in column):
            raise ValueError(
                f"{type(metrics[i]).__name__}.{attr} has different sizes across ranks: {column}"
            )
        metrics[i].__dict__.setdefault("_agreed_sizes", {})[attr] = target
    cat_info = []
    base = len(dynamic)
    for k, (i, attr, _, _) in enumerate(cats):
        start = base + k * _CAT_HEADER
        rows = [row[start : start + _CAT_HEADER] for row in table]
        counts = [r[0] for r in rows]
        described = [r for r in rows if r[1] >= 0]
        if not described:
            cat_info.append((counts, -1, []))  # no rank has rows: an empty result
            continue
        code, ndim = described[0][1], described[0][2]
        trailing = described[0][3 : 3 + ndim]
        for r in described[1:]:
            if r[1] != code or r[3 : 3 + r[2]] != trailing:
                raise ValueError(
                    f"{type(metrics[i]).__name__}.{attr} ('cat') has rows of different shapes or "
                    f"dtypes across ranks: {trailing} ({_DTYPES[code]}) vs "
                    f"{r[3 : 3 + r[2]]} ({_DTYPES[r[1]]})"
                )
        cat_info.append((counts, code, trailing))
    return fixed, cat_info


def _widen(
    i: int, attr: str, op: str, flat: torch.Tensor, how: Any, target: int, metrics: Sequence[Any]
) -> tuple[int, str, str, torch.Tensor, Any]:
    if flat.numel() != 1:
        raise ValueError(
            f"{type(metrics[i]).__name__}.{attr} has {flat.numel()} values, the job agreed on {target}"
        )
    dtype = how[2] if how[0] == "tensor" else torch.float64
    device = how[3] if how[0] == "tensor" else torch.device("cpu")
    how = ("tensor", torch.Size([target]), dtype, device)
    return (i, attr, op, flat.expand(target).clone(), how)
