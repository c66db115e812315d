"""Accuracy for binary, multiclass and multilabel outputs, kept as (correct, examples) counts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from distengine.metrics.metric import Metric, NotComputableError

__all__ = ["Accuracy"]


def _check_pair(output: Any, owner: str) -> tuple[torch.Tensor, torch.Tensor]:
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
    return y_pred.detach(), y.detach()


class Accuracy(Metric):
    """Fraction of correct predictions, for binary, multiclass and multilabel data.

    - binary: ``y_pred`` and ``y`` of shape ``(N, ...)`` holding 0s and 1s (threshold
      probabilities in ``output_transform``); ``y_pred`` may also be ``(N, 1, ...)``.
    - multiclass: ``y_pred`` of shape ``(N, C, ...)`` (scores; the argmax over ``C`` is the
      prediction), ``y`` of shape ``(N, ...)`` holding class indices.
    - multilabel (``is_multilabel=True``): ``y_pred`` and ``y`` of shape ``(N, C, ...)``, ``C > 1``,
      0s and 1s; a sample is correct when all its labels are.

    The state is two exact counts (``_num_correct``, ``_num_examples``), summed across ranks.

    Args:
        output_transform: maps the engine's output to ``(y_pred, y)``.
        is_multilabel: treat equally-shaped ``(N, C, ...)`` inputs as multilabel.
        device: where the counts are accumulated.
        skip_unrolling: see :class:`~distengine.metrics.Metric`.

    Example:
        >>> import torch
        >>> acc = Accuracy()
        >>> acc.update((torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), torch.tensor([1, 1, 1])))
        >>> round(acc.compute(), 4)
        0.6667
    """

    _reductions: ClassVar[dict[str, str]] = {"_num_correct": "sum", "_num_examples": "sum"}
    _extra_rank_state: ClassVar[tuple[str, ...]] = ("_type", "_num_classes")

    def __init__(
        self,
        output_transform: Callable[[Any], Any] = lambda x: x,
        is_multilabel: bool = False,
        device: str | torch.device = "cpu",
        skip_unrolling: bool = False,
    ) -> None:
        self._is_multilabel = bool(is_multilabel)
        super().__init__(output_transform, device=device, skip_unrolling=skip_unrolling)

    @property
    def is_multilabel(self) -> bool:
        """Whether equally-shaped ``(N, C, ...)`` inputs are read as multilabel."""
        return self._is_multilabel

    def reset(self) -> None:
        self._num_correct = torch.tensor(0, dtype=torch.int64, device=self._device)
        self._num_examples = 0
        self._type: str | None = None
        self._num_classes: int | None = None

    def _check_shape(self, y_pred: torch.Tensor, y: torch.Tensor) -> None:
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
                f"y and y_pred have incompatible shapes: y {tuple(y.shape)}, "
                f"y_pred {tuple(y_pred.shape)}"
            )
        if self._is_multilabel and not (y.shape == y_pred.shape and y.ndim > 1 and y.shape[1] > 1):
            raise ValueError(
                "multilabel y and y_pred must have the same shape (batch_size, num_classes, ...) "
                f"with num_classes > 1, got y {tuple(y.shape)} and y_pred {tuple(y_pred.shape)}"
            )

    @staticmethod
    def _check_binary(y_pred: torch.Tensor, y: torch.Tensor) -> None:
        for label, t in (("y", y), ("y_pred", y_pred)):
            if not torch.equal(t, t * t):
                raise ValueError(
                    f"For binary and multilabel inputs, {label} must hold only 0s and 1s, "
                    f"got values {torch.unique(t)[:5].tolist()}"
                )

    def _check_type(self, y_pred: torch.Tensor, y: torch.Tensor) -> None:
        if y.ndim + 1 == y_pred.ndim:
            num_classes = y_pred.shape[1]
            if num_classes == 1:
                kind = "binary"
                self._check_binary(y_pred, y)
            else:
                kind = "multiclass"
        else:
            self._check_binary(y_pred, y)
            kind = "multilabel" if self._is_multilabel else "binary"
            num_classes = y_pred.shape[1] if self._is_multilabel else 1
        if self._type is None:
            self._type, self._num_classes = kind, num_classes
            return
        if self._type != kind:
            raise ValueError(f"Input type changed from {self._type} to {kind} since the last reset")
        if self._num_classes != num_classes:
            raise ValueError(
                f"Number of classes changed from {self._num_classes} to {num_classes} "
                "since the last reset"
            )

    def update(self, output: Sequence[torch.Tensor]) -> None:
        y_pred, y = _check_pair(output, type(self).__name__)
        self._check_shape(y_pred, y)
        self._check_type(y_pred, y)
        if self._type == "binary":
            correct = torch.eq(y_pred.reshape(-1).to(y), y.reshape(-1))
        elif self._type == "multiclass":
            correct = torch.eq(torch.argmax(y_pred, dim=1), y).reshape(-1)
        else:
            num_classes = y_pred.shape[1]
            last = y_pred.ndim - 1
            pred_rows = torch.transpose(y_pred, 1, last).reshape(-1, num_classes)
            true_rows = torch.transpose(y, 1, last).reshape(-1, num_classes)
            correct = torch.all(true_rows == pred_rows.type_as(true_rows), dim=-1)
        self._num_correct += torch.sum(correct).to(self._device)
        self._num_examples += correct.shape[0]

    def compute(self) -> float:
        if self._num_examples == 0:
            raise NotComputableError(
                "Accuracy must have at least one example before it can be computed"
            )
        return self._num_correct.item() / self._num_examples
