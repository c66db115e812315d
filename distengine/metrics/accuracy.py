"""Accuracy for binary, multiclass and multilabel outputs, kept as (correct, examples) counts."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import torch

from distengine.metrics._classification import ClassificationMetric, check_pair
from distengine.metrics._output import SampleTransform
from distengine.metrics.metric import NotComputableError

__all__ = ["Accuracy"]


class Accuracy(ClassificationMetric):
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

    def __init__(
        self,
        output_transform: Callable[[Any], Any] = lambda x: x,
        is_multilabel: bool = False,
        device: str | torch.device = "cpu",
        skip_unrolling: bool = False,
    ) -> None:
        super().__init__(
            output_transform,
            is_multilabel=is_multilabel,
            device=device,
            skip_unrolling=skip_unrolling,
        )

    def reset(self) -> None:
        self._num_correct = torch.tensor(0, dtype=torch.int64, device=self._device)
        self._num_examples = 0
        super().reset()

    @staticmethod
    def get_sequence_transform(
        ignore_index: int | Iterable[int] | None = None,
        output_transform: Callable[[Any], Any] = lambda x: x,
    ) -> Callable[[Any], tuple[torch.Tensor, torch.Tensor]]:
        """Returns an ``output_transform`` for sequence outputs: token-level accuracy.

        ``output_transform`` gives ``(y_pred, y)`` of shapes ``(N, S, C)`` and ``(N, S)``;
        the result is ``(N*S, C)`` and ``(N*S,)`` with the positions whose target is
        ``ignore_index`` (an int or several) left out. Padded samples (rows of ``N``) are
        dropped before the flattening.

        Example:
            >>> acc = Accuracy(output_transform=Accuracy.get_sequence_transform(ignore_index=-100))
        """
        ignored = (
            None
            if ignore_index is None
            else list(ignore_index)
            if isinstance(ignore_index, Iterable)
            else [ignore_index]
        )

        def flatten(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
            y_pred, y = check_pair(output, "Accuracy.get_sequence_transform")
            if y_pred.ndim != 3 or y.ndim != 2:
                raise ValueError(
                    "Expected y_pred to be 3D (N, S, C) and y to be 2D (N, S), got "
                    f"y_pred of shape {tuple(y_pred.shape)} and y of shape {tuple(y.shape)}"
                )
            if y_pred.shape[:2] != y.shape:
                raise ValueError(
                    f"y_pred and y have incompatible shapes: the first two dimensions of "
                    f"y_pred {tuple(y_pred.shape)} must be those of y {tuple(y.shape)}"
                )
            y_pred, y = y_pred.reshape(-1, y_pred.shape[-1]), y.reshape(-1)
            if ignored is not None:
                keep = torch.ones_like(y, dtype=torch.bool)
                for value in ignored:
                    keep &= y != value
                y_pred, y = y_pred[keep], y[keep]
            return y_pred, y

        return SampleTransform(output_transform, flatten)

    def update(self, output: Sequence[torch.Tensor]) -> None:
        y_pred, y = check_pair(output, type(self).__name__)
        self._check_shape((y_pred, y))
        self._check_type((y_pred, y))
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
