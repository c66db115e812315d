"""From ``engine.state.output`` to ``update``'s input and from ``compute``'s result to ``state.metrics``.

Kept apart from the ``Metric`` class so the rules (mapping keys, padding rows, unrolling
lists, spreading dict results) read in one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Number
from typing import Any

import torch

__all__ = [
    "SampleTransform",
    "select_required",
    "drop_padding",
    "unrolled_pairs",
    "write_result",
    "detached_copy",
]


class SampleTransform:
    """An output transform in two steps, with padded rows dropped in between.

    ``before`` maps the engine output to per-sample tensors (one row per sample); ``after``
    may then change the rows (flatten sequences, mask tokens), after which a row is no
    longer a sample, so padding cannot be dropped there any more.
    """

    def __init__(self, before: Any, after: Any) -> None:
        self.before = before
        self.after = after

    def __call__(self, output: Any) -> Any:
        return self.after(self.before(output))


def select_required(output: Any, metric: Any) -> Any:
    """Turns a mapping output into the tuple of the metric's ``required_output_keys``."""
    if type(output) is tuple or not isinstance(output, Mapping):
        return output
    keys = metric.required_output_keys
    name = type(metric).__name__
    if keys is None:
        raise TypeError(
            f"Transformed engine output for {name} must be a tensor, number or sequence, "
            f"got a {type(output).__name__} with keys {list(output)}"
        )
    optional = metric._optional_output_keys
    missing = [k for k in keys if k not in output and k not in optional]
    if missing:
        raise ValueError(
            f"A mapping output for {name} must have the keys {list(keys)}, "
            f"missing {missing} (given {list(output)})"
        )
    return tuple(output[k] for k in keys if k in output)


def _rows(item: Any) -> int | None:
    if isinstance(item, torch.Tensor):
        return item.shape[0] if item.ndim > 0 else None
    if isinstance(item, list):
        return len(item)
    return None


def _drop(item: Any, padding: int) -> Any:
    rows = _rows(item)
    if rows is None:
        return item
    if padding > rows:
        raise ValueError(
            f"batch_padding is {padding} but an output item has only {rows} rows: "
            "padding counts rows at the end of the batch"
        )
    return item[: rows - padding]


def drop_padding(output: Any, padding: int) -> tuple[Any, bool]:
    """Drops the last ``padding`` rows of every tensor (or list) in ``output``.

    ``output`` is one tensor, or a tuple/list whose tensor and list items have one row per
    sample (``(y_pred, y)``, ``([y_pred_1, ...], [y_1, ...])``). Numbers, 0-dim tensors and
    other items (e.g. the keyword arguments of a loss) are kept as they are. Returns the
    trimmed output and whether no row is left (the batch held only padding). An output
    without rows (a loss, a number) counts as empty: the engine pads only a rank's whole
    batch, so such a value was computed from padding alone.
    """
    if isinstance(output, (tuple, list)):
        dropped = [_drop(item, padding) for item in output]
        rows = [_rows(item) for item in dropped]
        empty = any(r == 0 for r in rows) or all(r is None for r in rows)
        return (tuple(dropped) if isinstance(output, tuple) else dropped), empty
    dropped = _drop(output, padding)
    return dropped, _rows(dropped) in (0, None)


def _is_list_of_tensors_or_numbers(x: Any) -> bool:
    if isinstance(x, torch.Tensor):  # the common case, decided without an ABC check
        return False
    return (
        isinstance(x, Sequence)
        and not isinstance(x, str)
        and all(isinstance(v, (torch.Tensor, Number)) for v in x)
    )


def _batched(x: Any, device: torch.device | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.unsqueeze(0)
    return torch.tensor([x], device=device)


def unrolled_pairs(output: Any) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """``([y_pred_1, ...], [y_1, ...])`` -> ``[(y_pred_1[None], y_1[None]), ...]``, else ``None``.

    Ignite's rule for outputs whose two items are lists of tensors or numbers: one update per
    pair, each item given a batch dimension of 1.
    """
    if not (
        isinstance(output, Sequence)
        and not isinstance(output, str)
        and len(output) > 0
        and all(_is_list_of_tensors_or_numbers(o) for o in output)
    ):
        return None
    if not (len(output) == 2 and len(output[0]) == len(output[1])):
        raise ValueError(
            "An output of lists must be two lists of the same length (y_pred, y), got "
            f"{len(output)} lists of lengths {[len(o) for o in output]}"
        )
    pairs = []
    for p, t in zip(output[0], output[1]):
        y_pred = _batched(p)
        pairs.append((y_pred, _batched(t, device=y_pred.device)))
    return pairs


def write_result(engine: Any, name: str, result: Any, mode: str = "both") -> None:
    """Writes ``result`` to ``engine.state.metrics`` the way Ignite does.

    A mapping result is written under each of its keys (``mode`` ``"flatten"`` or
    ``"both"``) and, whole, under ``name`` (``"named"`` or ``"both"``); a 0-dim tensor
    becomes a Python number; other tensors are moved to the CPU.
    """
    metrics = engine.state.metrics
    if isinstance(result, Mapping):
        if mode in ("named", "both") and name in result:
            raise ValueError(
                f"Metric name {name!r} conflicts with a key of its mapping result {list(result)}"
            )
        if mode in ("flatten", "both"):
            for key, value in result.items():
                metrics[key] = value
        if mode in ("named", "both"):
            metrics[name] = result
        return
    if isinstance(result, torch.Tensor):
        result = result.item() if result.ndim == 0 else result.cpu()
    metrics[name] = result


def detached_copy(value: Any, device: torch.device) -> Any:
    """A copy of a state value that shares no storage with the metric (tensors moved to ``device``)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device, copy=True)
    if isinstance(value, Mapping):
        return {k: detached_copy(v, device) for k, v in value.items()}
    return value
