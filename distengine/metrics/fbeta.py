"""F-beta score, a function of exact Precision and Recall."""

from __future__ import annotations

from collections.abc import Callable
from numbers import Number
from typing import Any

import torch

from distengine.metrics.metrics_lambda import MetricsLambda
from distengine.metrics.precision import Precision
from distengine.metrics.recall import Recall

__all__ = ["Fbeta"]


def Fbeta(  # noqa: N802 - Ignite's name (a function returning a MetricsLambda)
    beta: float,
    average: bool = True,
    precision: Precision | None = None,
    recall: Recall | None = None,
    output_transform: Callable[[Any], Any] | None = None,
    device: str | torch.device | None = None,
) -> MetricsLambda:
    """Computes ``(1 + beta^2) * P * R / (beta^2 * P + R)`` per class, averaged unless ``average=False``.

    Built from a :class:`Precision` and a :class:`Recall` with ``average=False`` (given, or
    made here with ``output_transform`` and ``device``), so at world size > 1 it is computed
    from their counts summed across ranks: the same value as on one process.

    Args:
        beta: weight of recall (> 0).
        average: ``True``: the mean over classes (a float); ``False``: the per-class tensor.
        precision: a ``Precision(average=False)`` to reuse (then no ``output_transform`` /
            ``device``).
        recall: a ``Recall(average=False)`` to reuse (same rule).
        output_transform: for the precision and recall made here.
        device: for the precision and recall made here.

    Example:
        >>> import torch
        >>> f1 = Fbeta(1.0)
        >>> f1.update((torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]), torch.tensor([0, 1, 1])))
        >>> round(f1.compute(), 4)
        0.6667
    """
    if isinstance(beta, bool) or not isinstance(beta, Number) or not beta > 0:
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    for name, given in (("precision", precision), ("recall", recall)):
        if given is None:
            continue
        if output_transform is not None or device is not None:
            raise ValueError(
                f"When {name} is given, output_transform and device must be None "
                f"(they are {name}'s own)"
            )
        expected = Precision if name == "precision" else Recall
        if not isinstance(given, expected):
            raise TypeError(f"{name} must be a {expected.__name__}, got {type(given).__name__}")
        if given.average:
            raise ValueError(f"The {name} metric given to Fbeta must have average=False")
    transform = (lambda x: x) if output_transform is None else output_transform
    if precision is None:
        dev = recall.device if recall is not None else (device or "cpu")
        precision = Precision(output_transform=transform, average=False, device=dev)
    if recall is None:
        recall = Recall(output_transform=transform, average=False, device=precision.device)
    fbeta = (1.0 + beta**2) * precision * recall / (beta**2 * precision + recall + 1e-15)
    if average:
        fbeta = fbeta.mean().item()
    return fbeta
