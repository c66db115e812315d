"""Confusion matrix (exact integer counts summed across ranks) and the metrics built on it."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from distengine.metrics._classification import check_pair
from distengine.metrics.metric import Metric, NotComputableError
from distengine.metrics.metrics_lambda import MetricsLambda

__all__ = [
    "ConfusionMatrix",
    "IoU",
    "mIoU",
    "JaccardIndex",
    "DiceCoefficient",
    "cmAccuracy",
    "cmPrecision",
    "cmRecall",
]

_AVERAGES = ("samples", "recall", "precision")


class ConfusionMatrix(Metric):
    """Confusion matrix of multiclass (and segmentation) predictions.

    ``y_pred`` has shape ``(N, C, ...)`` (scores; the argmax over ``C`` is the prediction),
    ``y`` shape ``(N, ...)`` (class indices; values outside ``[0, C)`` are ignored, e.g. a
    segmentation ``ignore_index``). Row ``i``, column ``j`` counts samples of true class ``i``
    predicted as ``j``. The ``(C, C)`` int64 counts are summed across ranks: exact.

    Args:
        num_classes: number of classes ``C`` (> 1).
        average: ``None`` (counts), ``"samples"`` (counts / number of samples),
            ``"recall"`` (each row divided by its sum) or ``"precision"`` (each column
            divided by its sum).
        output_transform: maps the engine's output to ``(y_pred, y)``.
        device: where the counts are accumulated.
        skip_unrolling: see :class:`~distengine.metrics.Metric` (``True`` by default, as in
            Ignite).

    Example:
        >>> import torch
        >>> cm = ConfusionMatrix(num_classes=2)
        >>> miou = mIoU(cm)  # IoU, cmAccuracy ... build on it (before updates: making one resets cm)
        >>> cm.update((torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]), torch.tensor([0, 1, 1])))
        >>> cm.compute().tolist()
        [[1, 0], [1, 1]]
        >>> round(miou.compute().item(), 4)
        0.5
    """

    _reductions: ClassVar[dict[str, str]] = {"confusion_matrix": "sum", "_num_examples": "sum"}

    def __init__(
        self,
        num_classes: int,
        average: str | None = None,
        output_transform: Callable[[Any], Any] = lambda x: x,
        device: str | torch.device = "cpu",
        skip_unrolling: bool = True,
    ) -> None:
        if average is not None and average not in _AVERAGES:
            raise ValueError(f"average must be None or one of {list(_AVERAGES)}, got {average!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 1:
            raise ValueError(f"num_classes must be an int > 1, got {num_classes!r}")
        self.num_classes = num_classes
        self.average = average
        super().__init__(output_transform, device=device, skip_unrolling=skip_unrolling)

    def reset(self) -> None:
        self.confusion_matrix = torch.zeros(
            self.num_classes, self.num_classes, dtype=torch.int64, device=self._device
        )
        self._num_examples = 0

    def _check_shape(self, output: Sequence[torch.Tensor]) -> None:
        y_pred, y = output[0], output[1]
        if y_pred.ndim < 2:
            raise ValueError(
                f"y_pred must have shape (batch_size, num_classes ({self.num_classes}), ...), "
                f"got {tuple(y_pred.shape)}"
            )
        if y_pred.shape[1] != self.num_classes:
            raise ValueError(
                f"y_pred has {y_pred.shape[1]} classes, the confusion matrix {self.num_classes}"
            )
        if y.ndim + 1 != y_pred.ndim or tuple(y.shape) != (y_pred.shape[0], *y_pred.shape[2:]):
            raise ValueError(
                f"y_pred must have shape (batch_size, num_classes ({self.num_classes}), ...) and "
                f"y (batch_size, ...), got y {tuple(y.shape)} and y_pred {tuple(y_pred.shape)}"
            )

    def update(self, output: Sequence[torch.Tensor]) -> None:
        y_pred, y = check_pair(output, type(self).__name__)
        self._check_shape((y_pred, y))
        self._num_examples += y_pred.shape[0]
        predicted = torch.argmax(y_pred, dim=1).reshape(-1)
        y = y.reshape(-1)
        keep = (y >= 0) & (y < self.num_classes)
        cells = self.num_classes * y[keep].long() + predicted[keep]
        counts = torch.bincount(cells, minlength=self.num_classes**2)
        self.confusion_matrix += counts.reshape(self.num_classes, self.num_classes).to(
            self.confusion_matrix
        )

    def compute(self) -> torch.Tensor:
        if self._num_examples == 0:
            raise NotComputableError(
                "ConfusionMatrix must have at least one example before it can be computed"
            )
        if not self.average:
            return self.confusion_matrix.clone()
        matrix = self.confusion_matrix.float()
        if self.average == "samples":
            return matrix / self._num_examples
        return self.normalize(matrix, self.average)

    @staticmethod
    def normalize(matrix: torch.Tensor, average: str) -> torch.Tensor:
        """Divides each row (``"recall"``) or column (``"precision"``) by its sum.

        Example:
            >>> ConfusionMatrix.normalize(torch.tensor([[3.0, 1.0], [0.0, 2.0]]), "recall").tolist()
            [[0.75, 0.25], [0.0, 1.0]]
        """
        if average == "recall":
            return matrix / (matrix.sum(dim=1).unsqueeze(1) + 1e-15)
        if average == "precision":
            return matrix / (matrix.sum(dim=0) + 1e-15)
        raise ValueError(f"average must be 'recall' or 'precision', got {average!r}")


def _check_cm(cm: Any, ignore_index: Any = None, counts_only: bool = False) -> None:
    if not isinstance(cm, ConfusionMatrix):
        raise TypeError(f"cm must be a ConfusionMatrix, got {type(cm).__name__}")
    if counts_only and cm.average not in (None, "samples"):
        raise ValueError(
            f"The ConfusionMatrix must have average None or 'samples', got {cm.average!r}"
        )
    if ignore_index is not None and not (
        isinstance(ignore_index, numbers.Integral)
        and not isinstance(ignore_index, bool)
        and 0 <= ignore_index < cm.num_classes
    ):
        raise ValueError(
            f"ignore_index must be an int in [0, {cm.num_classes}), got {ignore_index!r}"
        )


def _without(vector: torch.Tensor, index: int) -> torch.Tensor:
    keep = [i for i in range(len(vector)) if i != index]
    return vector[keep]


def IoU(cm: ConfusionMatrix, ignore_index: int | None = None) -> MetricsLambda:  # noqa: N802
    """Computes the intersection over union per class: ``TP / (TP + FP + FN)`` (``ignore_index`` dropped).

    Example:
        >>> iou = IoU(ConfusionMatrix(num_classes=3), ignore_index=0)  # a MetricsLambda
    """
    _check_cm(cm, ignore_index, counts_only=True)
    matrix = cm.to(torch.double)
    iou = matrix.diag() / (matrix.sum(dim=1) + matrix.sum(dim=0) - matrix.diag() + 1e-15)
    if ignore_index is None:
        return iou
    return MetricsLambda(lambda v: _without(v, ignore_index), iou)


def mIoU(cm: ConfusionMatrix, ignore_index: int | None = None) -> MetricsLambda:  # noqa: N802
    """Computes the mean of :func:`IoU` over the classes (``ignore_index`` left out).

    Example:
        >>> miou = mIoU(ConfusionMatrix(num_classes=21), ignore_index=0)  # a MetricsLambda
    """
    return IoU(cm, ignore_index).mean()


def JaccardIndex(cm: ConfusionMatrix, ignore_index: int | None = None) -> MetricsLambda:  # noqa: N802
    """Computes the Jaccard index of each class (the same as :func:`IoU`).

    Example:
        >>> j = JaccardIndex(ConfusionMatrix(num_classes=3))
    """
    return IoU(cm, ignore_index)


def DiceCoefficient(cm: ConfusionMatrix, ignore_index: int | None = None) -> MetricsLambda:  # noqa: N802
    """Computes the Dice coefficient per class: ``2 TP / (2 TP + FP + FN)`` (``ignore_index`` dropped).

    Example:
        >>> dice = DiceCoefficient(ConfusionMatrix(num_classes=3))
    """
    _check_cm(cm, ignore_index)
    matrix = cm.to(torch.double)
    dice = 2.0 * matrix.diag() / (matrix.sum(dim=1) + matrix.sum(dim=0) + 1e-15)
    if ignore_index is None:
        return dice
    return MetricsLambda(lambda v: _without(v, ignore_index), dice)


def cmAccuracy(cm: ConfusionMatrix) -> MetricsLambda:  # noqa: N802
    """Computes the accuracy from a confusion matrix: trace / total.

    Example:
        >>> acc = cmAccuracy(ConfusionMatrix(num_classes=3))
    """
    _check_cm(cm)
    matrix = cm.to(torch.double)
    return matrix.diag().sum() / (matrix.sum() + 1e-15)


def cmPrecision(cm: ConfusionMatrix, average: bool = True) -> MetricsLambda:  # noqa: N802
    """Computes the precision per class from a confusion matrix (their mean when ``average``).

    Example:
        >>> p = cmPrecision(ConfusionMatrix(num_classes=3), average=False)
    """
    _check_cm(cm)
    matrix = cm.to(torch.double)
    precision = matrix.diag() / (matrix.sum(dim=0) + 1e-15)
    return precision.mean() if average else precision


def cmRecall(cm: ConfusionMatrix, average: bool = True) -> MetricsLambda:  # noqa: N802
    """Computes the recall per class from a confusion matrix (their mean when ``average``).

    Example:
        >>> r = cmRecall(ConfusionMatrix(num_classes=3), average=False)
    """
    _check_cm(cm)
    matrix = cm.to(torch.double)
    recall = matrix.diag() / (matrix.sum(dim=1) + 1e-15)
    return recall.mean() if average else recall
