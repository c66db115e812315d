"""Mean squared / absolute errors, kept as a float64 sum of errors and a count."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from distengine.metrics._classification import check_pair
from distengine.metrics.metric import Metric, NotComputableError

__all__ = ["MeanSquaredError", "MeanAbsoluteError", "RootMeanSquaredError"]


class _ErrorSum(Metric):
    """Sum of per-element errors over examples; divided by the number of examples (rows).

    Each batch's errors are summed in the inputs' dtype (as Ignite does) and added to a
    float64 total, which is summed across ranks.
    """

    _sum_name: ClassVar[str] = ""  # the attribute holding the total (Ignite's name)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        if "_sum_name" in cls.__dict__:
            cls._reductions = {cls._sum_name: "sum", "_num_examples": "sum"}
        super().__init_subclass__(**kwargs)

    def reset(self) -> None:
        setattr(self, self._sum_name, torch.tensor(0.0, dtype=torch.float64, device=self._device))
        self._num_examples = 0

    def _errors(self, diff: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, output: Sequence[torch.Tensor]) -> None:
        """Adds ``(y_pred, y)``; further items of ``output`` are ignored, as in Ignite."""
        if isinstance(output, Sequence) and len(output) > 2:
            output = output[:2]
        y_pred, y = check_pair(output, type(self).__name__)
        if y.numel() != y_pred.numel():
            raise ValueError(
                f"{type(self).__name__} needs y_pred and y with the same number of elements, got "
                f"y_pred {tuple(y_pred.shape)} and y {tuple(y.shape)}"
            )
        batch_sum = self._errors(y_pred - y.reshape(y_pred.shape)).sum()
        total = getattr(self, self._sum_name)
        setattr(self, self._sum_name, total + batch_sum.to(self._device, torch.float64))
        self._num_examples += y.shape[0] if y.ndim else 1

    def compute(self) -> float:
        if self._num_examples == 0:
            raise NotComputableError(
                f"{type(self).__name__} must have at least one example before it can be computed"
            )
        return getattr(self, self._sum_name).item() / self._num_examples


class MeanSquaredError(_ErrorSum):
    """Sum of squared errors divided by the number of examples (rows of ``y``).

    With ``y`` of shape ``(N, ...)`` every element's squared error is summed and the sum is
    divided by ``N``, as in Ignite. Sums (float64) and counts are summed across ranks.

    Args:
        output_transform: maps the engine's output to ``(y_pred, y)``.
        device: where the sum is accumulated.
        skip_unrolling: see :class:`~distengine.metrics.Metric`.

    Example:
        >>> import torch
        >>> mse = MeanSquaredError()
        >>> mse.update((torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 4.0, 2.0])))
        >>> mse.compute()
        1.6666666666666667
    """

    _sum_name = "_sum_of_squared_errors"

    def _errors(self, diff: torch.Tensor) -> torch.Tensor:
        return diff * diff


class MeanAbsoluteError(_ErrorSum):
    """Sum of absolute errors divided by the number of examples (rows of ``y``).

    Args:
        output_transform: maps the engine's output to ``(y_pred, y)``.
        device: where the sum is accumulated.
        skip_unrolling: see :class:`~distengine.metrics.Metric`.

    Example:
        >>> import torch
        >>> mae = MeanAbsoluteError()
        >>> mae.update((torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 4.0, 2.0])))
        >>> mae.compute()
        1.0
    """

    _sum_name = "_sum_of_absolute_errors"

    def _errors(self, diff: torch.Tensor) -> torch.Tensor:
        return diff.abs()


class RootMeanSquaredError(MeanSquaredError):
    """Square root of :class:`MeanSquaredError` (of the exact global mean at world size > 1).

    Example:
        >>> import torch
        >>> rmse = RootMeanSquaredError()
        >>> rmse.update((torch.tensor([0.0, 0.0]), torch.tensor([3.0, 4.0])))
        >>> round(rmse.compute(), 4)
        3.5355
    """

    def compute(self) -> float:
        return math.sqrt(super().compute())
