"""Input checks shared by the classification metrics (Accuracy, Precision, Recall).

The input kinds are Ignite's:

- binary: ``y_pred`` and ``y`` of shape ``(N, ...)`` holding 0s and 1s (``y_pred`` may also
  be ``(N, 1, ...)``);
- multiclass: ``y_pred`` of shape ``(N, C, ...)`` (scores; the argmax over ``C`` is the
  prediction), ``y`` of shape ``(N, ...)`` holding class indices;
- multilabel (``is_multilabel=True``): ``y_pred`` and ``y`` of shape ``(N, C, ...)``,
  ``C > 1``, 0s and 1s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from distengine.metrics.metric import Metric

__all__ = ["ClassificationMetric", "InputKindError", "check_pair"]


class InputKindError(ValueError, RuntimeError):
    """The input is of no known kind, or of another kind than the earlier updates.

    A ``ValueError`` (bad input); also a ``RuntimeError``, which Ignite raises here.
    """


def check_pair(output: Any, owner: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``output`` as ``(y_pred, y)`` detached tensors, or a clear ``TypeError``."""
    if not (isinstance(output, Sequence) and len(output) == 2):
        raise TypeError(
            f"{owner}.update expects (y_pred, y), got {type(output).__name__}"
            + (f" of length {len(output)}" if isinstance(output, Sequence) else "")
        )
    y_pred, y = output
    if not isinstance(y_pred, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(
            f"{owner}.update expects y_pred and y to be tensors, "
            f"got {type(y_pred).__name__} and {type(y).__name__}"
        )
    # detached only when needed: a metric updated by the engine sees no graph already
    return (
        y_pred.detach() if y_pred.requires_grad else y_pred,
        y.detach() if y.requires_grad else y,
    )


class ClassificationMetric(Metric):
    """A metric over binary, multiclass or multilabel inputs; remembers the kind it saw.

    ``_type`` (``"binary"``, ``"multiclass"`` or ``"multilabel"``) and ``_num_classes`` are
    set by the first update after a reset; a later update of another kind raises.
    """

    # The kind seen (_type, _num_classes) is not saved: the next update finds it again.

    def __init__(
        self,
        output_transform: Callable[[Any], Any] = lambda x: x,
        is_multilabel: bool = False,
        device: str | torch.device = "cpu",
        skip_unrolling: bool = False,
    ) -> None:
        self._is_multilabel = bool(is_multilabel)
        self._type: str | None = None
        self._num_classes: int | None = None
        super().__init__(output_transform, device=device, skip_unrolling=skip_unrolling)

    @property
    def is_multilabel(self) -> bool:
        """Whether equally-shaped ``(N, C, ...)`` inputs are read as multilabel."""
        return self._is_multilabel

    def reset(self) -> None:
        self._type = None
        self._num_classes = None

    def _check_shape(self, output: Sequence[torch.Tensor]) -> None:
        y_pred, y = output
        if not (y.ndim == y_pred.ndim or y.ndim + 1 == y_pred.ndim):
            raise ValueError(
                "y must have shape (batch_size, ...) and y_pred (batch_size, num_classes, ...) "
                f"or (batch_size, ...), got y {tuple(y.shape)} and y_pred {tuple(y_pred.shape)}"
            )
        pred_shape = tuple(y_pred.shape)
        if y.ndim + 1 == y_pred.ndim:
            pred_shape = pred_shape[:1] + pred_shape[2:]
        if tuple(y.shape) != pred_shape:
            raise ValueError(
                f"y and y_pred must have compatible shapes, got y {tuple(y.shape)} and "
                f"y_pred {tuple(y_pred.shape)}"
            )
        if self._is_multilabel and not (y.shape == y_pred.shape and y.ndim > 1 and y.shape[1] > 1):
            raise ValueError(
                "multilabel y and y_pred must have the same shape (batch_size, num_classes, ...) "
                f"with num_classes > 1, got y {tuple(y.shape)} and y_pred {tuple(y_pred.shape)}"
            )

    @staticmethod
    def _check_binary_multilabel_cases(output: Sequence[torch.Tensor]) -> None:
        y_pred, y = output
        for label, t in (("y", y), ("y_pred", y_pred)):
            if not torch.equal(t, t * t):
                raise ValueError(
                    f"For binary and multilabel inputs, {label} must hold only 0s and 1s, "
                    f"got values {torch.unique(t)[:5].tolist()}"
                )

    def _check_type(self, output: Sequence[torch.Tensor]) -> None:
        y_pred, y = output
        if y.ndim + 1 == y_pred.ndim:
            num_classes = y_pred.shape[1]
            if num_classes == 1:
                kind = "binary"
                self._check_binary_multilabel_cases((y_pred, y))
            else:
                kind = "multiclass"
        elif y.ndim == y_pred.ndim:
            self._check_binary_multilabel_cases((y_pred, y))
            kind = "multilabel" if self._is_multilabel else "binary"
            num_classes = y_pred.shape[1] if self._is_multilabel else 1
        else:
            raise InputKindError(
                f"y of shape {tuple(y.shape)} and y_pred of shape {tuple(y_pred.shape)} are "
                "neither binary, multiclass nor multilabel inputs"
            )
        if self._type is None:
            self._type, self._num_classes = kind, num_classes
            return
        if self._type != kind:
            raise InputKindError(
                f"Input type changed from {self._type} to {kind} since the last reset"
            )
        if self._num_classes != num_classes:
            raise ValueError(
                f"Number of classes changed from {self._num_classes} to {num_classes} "
                "since the last reset"
            )
