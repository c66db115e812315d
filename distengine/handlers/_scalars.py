"""Helpers shared by the display and logging handlers.

Two jobs that ProgressBar, CSVLogger and TensorBoardLogger all need: turn an engine's
output and metrics into flat ``{name: scalar}`` dicts, and tell which state counter
(iteration or epoch) an event -- filtered or not -- advances.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

# Which counter of ``engine.state`` an event is counted by (Ignite's mapping). Events are
# compared by name so that filtered events (``Events.ITERATION_COMPLETED(every=10)``) and
# plain members map alike, whatever class the filter wrapper is.
_ITERATION_EVENTS = frozenset(
    {"ITERATION_STARTED", "ITERATION_COMPLETED", "GET_BATCH_STARTED", "GET_BATCH_COMPLETED"}
)
_EPOCH_EVENTS = frozenset({"EPOCH_STARTED", "EPOCH_COMPLETED", "STARTED", "COMPLETED"})

# Order in which the standard events fire inside one run (used to check that a bar
# advances before it is closed).
EVENT_ORDER = (
    "STARTED",
    "EPOCH_STARTED",
    "ITERATION_STARTED",
    "ITERATION_COMPLETED",
    "EPOCH_COMPLETED",
    "COMPLETED",
)


def event_name(event: Any) -> str:
    """Returns the upper-case name of an event (``"ITERATION_COMPLETED"``), filtered or not."""
    name = getattr(event, "name", None)
    if isinstance(name, str):
        return name.upper()
    return str(event).rsplit(".", 1)[-1].upper()


def is_filtered(event: Any) -> bool:
    """Returns True if ``event`` carries a filter (``every``/``once``/``before``/...)."""
    return getattr(event, "filter", None) is not None


def event_counter(event: Any) -> str:
    """Returns ``"iteration"`` or ``"epoch"``: the state attribute that counts ``event``."""
    name = event_name(event)
    if name in _EPOCH_EVENTS:
        return "epoch"
    return "iteration"


def max_count(event: Any, state: Any) -> int | None:
    """Returns how many times ``event`` fires per bar: epoch length or max epochs, if known."""
    name = event_name(event)
    if name in _ITERATION_EVENTS:
        return state.epoch_length
    if name in ("EPOCH_STARTED", "EPOCH_COMPLETED"):
        return state.max_epochs
    return 1


def flatten(
    key: tuple[str, ...], value: Any, *, allow_text: bool = False
) -> dict[tuple[str, ...], float | int | str]:
    """Flattens one value into scalars keyed by name tuples.

    Numbers stay numbers (``bool`` becomes ``int``), 0-d tensors become Python numbers,
    1-d tensors, lists, tuples and named tuples give one entry per element (key + index),
    mappings one entry per key. Values that cannot be shown as scalars are skipped with a
    warning.

    Args:
        key: the name so far, as a tuple of parts.
        value: the value to flatten.
        allow_text: keep strings (a progress bar can show them, a scalar logger cannot).

    Example:
        >>> flatten(("loss",), {"a": torch.tensor([1.0, 2.0])})
        {('loss', 'a', '0'): 1.0, ('loss', 'a', '1'): 2.0}
    """
    if isinstance(value, bool):
        return {key: int(value)}
    if isinstance(value, numbers.Number):
        return {key: value}  # type: ignore[dict-item]
    if isinstance(value, str):
        if allow_text:
            return {key: value}
    elif isinstance(value, torch.Tensor):
        if value.ndim == 0:
            return {key: value.item()}
        if value.ndim == 1:
            return {(*key, str(i)): v.item() for i, v in enumerate(value)}
    elif isinstance(value, Mapping) or (
        isinstance(value, Sequence) and not isinstance(value, bytes)
    ):
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        out: dict[tuple[str, ...], float | int | str] = {}
        for k, sub in items:
            out.update(flatten((*key, str(k)), sub, allow_text=allow_text))
        return out
    warnings.warn(
        f"cannot log {'/'.join(key)!r}: expected a number, a 0-d or 1-d tensor"
        f"{', a string' if allow_text else ''}, or a dict/list of them; got {type(value).__name__}",
        stacklevel=3,
    )
    return {}


def to_scalars(
    name: str, value: Any, *, separator: str = "/", allow_text: bool = False
) -> dict[str, float | int | str]:
    """Flattens one named value into ``{name: scalar}`` (see :func:`flatten`).

    Args:
        name: name of the value.
        value: the value to flatten.
        separator: joins a name and a key or element index.
        allow_text: keep strings (a progress bar can show them, a scalar logger cannot).

    Returns:
        An ordered ``{name: scalar}`` dict.

    Example:
        >>> to_scalars("loss", torch.tensor([1.0, 2.0]))
        {'loss/0': 1.0, 'loss/1': 2.0}
    """
    return {separator.join(k): v for k, v in flatten((name,), value, allow_text=allow_text).items()}


def check_metric_names(metric_names: Any) -> list[str] | str | None:
    """Validates ``metric_names``: None, ``"all"`` or a list of metric names.

    Raises:
        TypeError: for anything else.
    """
    if metric_names is None or metric_names == "all":
        return metric_names
    if isinstance(metric_names, Sequence) and not isinstance(metric_names, str):
        if all(isinstance(n, str) for n in metric_names):
            return list(metric_names)
    raise TypeError(
        f"metric_names should be None, 'all' or a list of metric names (str), got {metric_names!r}"
    )


def check_state_attributes(state_attributes: Any) -> list[str] | None:
    """Validates ``state_attributes``: None or a list of attribute names.

    Raises:
        TypeError: for anything else.
    """
    if state_attributes is None:
        return None
    if (
        isinstance(state_attributes, Sequence)
        and not isinstance(state_attributes, str)
        and all(isinstance(n, str) for n in state_attributes)
    ):
        return list(state_attributes)
    raise TypeError(
        f"state_attributes should be None or a list of engine.state attribute names (str), "
        f"got {state_attributes!r}"
    )


def gather(
    engine: Any,
    metric_names: list[str] | str | None,
    output_transform: Callable[[Any], Any] | None,
    state_attributes: list[str] | None = None,
) -> dict[str, Any]:
    """The raw values to log: chosen metrics, the transformed output, state attributes.

    A metric name missing from ``engine.state.metrics`` is skipped with a warning; a
    missing state attribute gives ``None`` (skipped when flattened, with a warning).
    """
    values: dict[str, Any] = {}
    metrics = engine.state.metrics
    if metric_names == "all":
        values.update(metrics)
    elif metric_names is not None:
        for name in metric_names:
            if name not in metrics:
                warnings.warn(
                    f"metric {name!r} is not in engine.state.metrics (has {sorted(metrics)})",
                    stacklevel=3,
                )
                continue
            values[name] = metrics[name]
    if output_transform is not None:
        out = output_transform(engine.state.output)
        values.update(out if isinstance(out, Mapping) else {"output": out})
    for name in state_attributes or ():
        values[name] = getattr(engine.state, name, None)
    return values


def collect(
    engine: Any,
    metric_names: list[str] | str | None,
    output_transform: Callable[[Any], Any] | None,
    *,
    separator: str = "/",
    allow_text: bool = False,
    state_attributes: list[str] | None = None,
) -> dict[str, float | int | str]:
    """Gathers the chosen metrics, the transformed output and state attributes, flattened.

    Args:
        engine: the engine whose state is read.
        metric_names: ``"all"``, a list of names, or None for no metrics. A name missing
            from ``engine.state.metrics`` is skipped with a warning.
        output_transform: maps ``engine.state.output`` to a scalar (shown as ``"output"``)
            or to a ``{name: value}`` dict; None logs no output.
        separator: see :func:`to_scalars`.
        allow_text: see :func:`to_scalars`.
        state_attributes: names of ``engine.state`` attributes to add.

    Returns:
        A flat ``{name: scalar}`` dict: metrics, then the output, then state attributes.
    """
    flat: dict[str, float | int | str] = {}
    for name, value in gather(engine, metric_names, output_transform, state_attributes).items():
        flat.update(to_scalars(str(name), value, separator=separator, allow_text=allow_text))
    return flat
