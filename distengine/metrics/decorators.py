"""Ignite's metric decorators, kept for source compatibility: declarations, not collectives."""

from __future__ import annotations

import functools
from collections.abc import Callable
from numbers import Number
from typing import Any

import torch

from distengine.metrics._state import in_state_view, is_metric
from distengine.metrics.reduction import reduce_states

__all__ = ["sync_all_reduce", "reinit__is_reduced"]

# Ignite's op names in ``sync_all_reduce("attr:OP")`` -> ours.
_IGNITE_OPS = {"SUM": "sum", "MAX": "max", "MIN": "min", "PRODUCT": "prod"}


def sync_all_reduce(*attrs: str) -> Callable[[Callable], Callable]:
    """Makes a method see the named attributes reduced across ranks (Ignite's decorator).

    ``"attr"`` is summed; ``"attr:MAX"``, ``"attr:MIN"``, ``"attr:PRODUCT"`` choose another
    op (an invalid op raises when the class is defined). On ``compute`` this is a
    declaration, not a collective of its own: the attributes are added to the class's
    ``_reductions`` and join the engine's one collective per completion event (prefer
    declaring ``_reductions`` directly). On another method, at world size > 1, the method
    sees the reduced values (one collective per call); the metric's own values are left as
    they were.

    Example:
        >>> from distengine.metrics import Metric
        >>> class Total(Metric):
        ...     def reset(self): self._total = 0.0
        ...     def update(self, output): self._total += float(output[0].sum())
        ...     @sync_all_reduce("_total")
        ...     def compute(self): return self._total
        >>> Total._reductions
        {'_total': 'sum'}
    """
    declared: dict[str, str] = {}
    for spec in attrs:
        if not isinstance(spec, str):
            raise TypeError(
                f"sync_all_reduce takes attribute names (str), got {type(spec).__name__}"
            )
        name, _, op = spec.partition(":")
        if op and op not in _IGNITE_OPS:
            raise ValueError(
                f"Reduction operation is not valid (expected one of {list(_IGNITE_OPS)}), got {op!r}"
            )
        declared[name] = _IGNITE_OPS[op] if op else "sum"

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            if not is_metric(self):
                raise RuntimeError(
                    "sync_all_reduce decorates methods of distengine.metrics.Metric subclasses only"
                )
            for name in declared:
                if name not in self.__dict__:
                    raise ValueError(
                        f"Metric {type(self).__name__} has no attribute named {name!r}"
                    )
                value = self.__dict__[name]
                if isinstance(value, bool) or not isinstance(value, (Number, torch.Tensor)):
                    raise TypeError(
                        f"sync_all_reduce reduces numbers and tensors, but {name!r} of "
                        f"{type(self).__name__} is a {type(value).__name__}"
                    )
            if in_state_view(self):  # compute() inside the engine's (or its own) reduction
                return func(self, *args, **kwargs)
            reduced = reduce_states([_Declared(self, declared)])
            if reduced is None:
                return func(self, *args, **kwargs)
            with self._state_view(reduced[0]):
                return func(self, *args, **kwargs)

        method._sync_all_reduce = dict(declared)  # type: ignore[attr-defined]
        method._decorated = True  # type: ignore[attr-defined]
        return method

    decorate._decorated = True  # type: ignore[attr-defined]
    return decorate


class _Declared:
    """The attributes one ``sync_all_reduce`` names, as the reducer reads them."""

    _fixed_state_shapes = True

    def __init__(self, metric: Any, declared: dict[str, str]) -> None:
        self._metric = metric
        self._reductions = declared

    def _reducible_state(self) -> dict[str, Any]:
        return {name: getattr(self._metric, name) for name in self._reductions}


def reinit__is_reduced(func: Callable) -> Callable:  # noqa: N802 - Ignite's name
    """Marks ``reset``/``update`` as Ignite does (it changes nothing; kept for source compatibility).

    distengine never reduces a metric's state in place (``compute`` works on a reduced
    copy), so there is no "already reduced" flag to clear; a cached ``_result`` is dropped.

    Example:
        >>> from distengine.metrics import Metric
        >>> class Count(Metric):
        ...     @reinit__is_reduced
        ...     def reset(self): self._n = 0
        ...     def update(self, output): self._n += 1
        ...     def compute(self): return self._n
    """

    @functools.wraps(func)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = func(self, *args, **kwargs)
        if "_result" in self.__dict__:
            self._result = None
        return result

    wrapper._decorated = True  # type: ignore[attr-defined]
    return wrapper
