"""Top-k accuracy, kept as (correct, examples) counts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from distengine.metrics._classification import check_pair
from distengine.metrics.metric import Metric, NotComputableError

__all__ = ["TopKCategoricalAccuracy"]


class TopKCategoricalAccuracy(Metric):
    """Fraction of samples whose true class is among the ``k`` highest scores.

    ``y_pred`` has shape ``(N, C)`` (scores), ``y`` shape ``(N,)`` (class indices). The two
    counts are summed across ranks.

    Args:
        k: how many of the highest scores count (``1 <= k``; at most ``C`` at update).
        output_transform: maps the engine's output to ``(y_pred, y)``.
        device: where the counts are accumulated.
        skip_unrolling: see :class:`~distengine.metrics.Metric`.

    Example:
        >>> import torch
        >>> top2 = TopKCategoricalAccuracy(k=2)
        >>> top2.update((torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1]]), torch.tensor([2, 2])))
        >>> top2.compute()
        0.5
    """

    _reductions: ClassVar[dict[str, str]] = {"_num_correct": "sum", "_num_examples": "sum"}

    def __init__(
        self,
        k: int = 5,
        output_transform: Callable[[Any], Any] = lambda x: x,
        device: str | torch.device = "cpu",
        skip_unrolling: bool = False,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        self._k = k
        super().__init__(output_transform, device=device, skip_unrolling=skip_unrolling)

    def reset(self) -> None:
        self._num_correct = torch.tensor(0, dtype=torch.int64, device=self._device)
        self._num_examples = 0

    def update(self, output: Sequence[torch.Tensor]) -> None:
        y_pred, y = check_pair(output, type(self).__name__)
        if y_pred.ndim != 2 or y_pred.shape[0] != y.reshape(-1).shape[0]:
            raise ValueError(
                "TopKCategoricalAccuracy expects y_pred of shape (batch_size, num_classes) and y "
                f"of shape (batch_size,), got y_pred {tuple(y_pred.shape)} and y {tuple(y.shape)}"
            )
        if y_pred.shape[1] < self._k:
            raise ValueError(f"k={self._k} is larger than the {y_pred.shape[1]} classes of y_pred")
        top = torch.topk(y_pred, self._k, dim=1)[1]
        correct = torch.eq(top, y.reshape(-1, 1).expand(-1, self._k)).sum(dim=1)
        self._num_correct += correct.sum().to(self._device)
        self._num_examples += correct.shape[0]

    def compute(self) -> float:
        if self._num_examples == 0:
            raise NotComputableError(
                "TopKCategoricalAccuracy must have at least one example before it can be computed"
            )
        return self._num_correct.item() / self._num_examples
