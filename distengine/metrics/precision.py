"""Precision (and the base it shares with Recall): exact per-class counts summed across ranks."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from distengine.metrics._classification import ClassificationMetric, check_pair
from distengine.metrics.metric import NotComputableError

__all__ = ["Precision"]

_AVERAGES = ("macro", "micro", "weighted", "samples")


class _PrecisionRecallBase(ClassificationMetric):
    """Counts a ratio ``numerator / denominator`` per class (or summed, or per sample).

    The state (``_numerator``, ``_denominator``, ``_weight``: float64 tensors; ``_updated``)
    is summed across ranks before ``compute``. Per-class counts take their length from the
    first update; a rank whose batch is all padding updates with zero rows, so every rank
    knows that length at the same iteration and the reduction stays one collective.
    """

    _reductions: ClassVar[dict[str, str]] = {
        "_numerator": "sum",
        "_denominator": "sum",
        "_weight": "sum",
        "_updated": "max",
    }
    _fixed_state_shapes: ClassVar[bool] = False
    _updates_on_empty_batch: ClassVar[bool] = True

    def __init__(
        self,
        output_transform: Callable[[Any], Any] = lambda x: x,
        average: bool | str | None = False,
        is_multilabel: bool = False,
        device: str | torch.device = "cpu",
        skip_unrolling: bool = False,
    ) -> None:
        if not (average is None or isinstance(average, bool) or average in _AVERAGES):
            raise ValueError(
                f"average must be None, a bool or one of {list(_AVERAGES)}, got {average!r}"
            )
        self._average: bool | str | None = "macro" if average is True else average
        self.eps = 1e-20
        super().__init__(
            output_transform,
            is_multilabel=is_multilabel,
            device=device,
            skip_unrolling=skip_unrolling,
        )

    @property
    def average(self) -> bool | str | None:
        """How the per-class values are averaged (``False``: not averaged; ``True`` reads as
        ``"macro"``)."""
        return self._average

    def reset(self) -> None:
        zero = torch.tensor(0.0, dtype=torch.float64, device=self._device)
        self._numerator = zero
        self._denominator = zero.clone()
        self._weight = zero.clone()
        self._updated = False
        self._shaped = False
        super().reset()

    def _state_shaped(self) -> bool:
        return self._shaped

    def _load_rank_state(self, state_dict: Any) -> None:
        super()._load_rank_state(state_dict)
        # Loaded on every rank alike: per-class counts are shaped; 0-d ones are agreed once.
        self._shaped = isinstance(self._numerator, torch.Tensor) and self._numerator.ndim > 0

    def _check_type(self, output: Sequence[torch.Tensor]) -> None:
        super()._check_type(output)
        if self._type in ("binary", "multiclass") and self._average == "samples":
            raise ValueError("average='samples' is incompatible with binary and multiclass inputs")
        y_pred, y = output
        if self._type == "multiclass" and y.dtype != torch.long:
            warnings.warn(
                "y should be of dtype long for multiclass inputs", RuntimeWarning, stacklevel=3
            )
        if (
            self._type == "binary"
            and self._average is not False
            and (y.dtype != torch.long or y_pred.dtype != torch.long)
        ):
            warnings.warn(
                "y and y_pred should be of dtype long for binary inputs with average != False",
                RuntimeWarning,
                stacklevel=3,
            )

    def _prepare_output(
        self, output: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(y_pred, y, correct)`` as float64 rows: one-hot per class, or per label."""
        y_pred, y = output[0].detach(), output[1].detach()
        if self._type in ("binary", "multiclass"):
            num_classes = 2 if self._type == "binary" else y_pred.shape[1]
            if self._type == "multiclass" and y.numel() and int(y.max()) + 1 > num_classes:
                raise ValueError(
                    f"y_pred has {num_classes} classes but y holds class {int(y.max())}"
                )
            y = y.reshape(-1)
            if self._type == "binary" and self._average is False:
                y_pred = y_pred.reshape(-1)
            else:
                indices = torch.argmax(y_pred, dim=1) if self._type == "multiclass" else y_pred
                y = torch.nn.functional.one_hot(y.long(), num_classes)
                y_pred = torch.nn.functional.one_hot(indices.reshape(-1).long(), num_classes)
        else:  # multilabel: (N, C, ...) -> (N * ..., C)
            num_labels = y_pred.shape[1]
            y_pred = torch.transpose(y_pred, 1, -1).reshape(-1, num_labels)
            y = torch.transpose(y, 1, -1).reshape(-1, num_labels)
        y_pred = y_pred.to(dtype=torch.float64, device=self._device)
        y = y.to(dtype=torch.float64, device=self._device)
        return y_pred, y, y * y_pred

    def _count(self, predicted: torch.Tensor, y: torch.Tensor, correct: torch.Tensor) -> None:
        """Adds a batch; ``predicted`` is what the ratio divides by (y_pred or y)."""
        if self._average == "samples":
            per_sample = correct.sum(dim=1) / (predicted.sum(dim=1) + self.eps)
            self._numerator = self._numerator + per_sample.sum()
            self._denominator = self._denominator + y.shape[0]
        elif self._average == "micro":
            self._numerator = self._numerator + correct.sum()
            self._denominator = self._denominator + predicted.sum()
        else:  # False, None, "macro", "weighted": per class / label
            self._numerator = self._numerator + correct.sum(dim=0)
            self._denominator = self._denominator + predicted.sum(dim=0)
            if self._average == "weighted":
                self._weight = self._weight + y.sum(dim=0)
        self._shaped = True
        if y.shape[0] > 0:
            self._updated = True

    def _check(self, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        y_pred, y = check_pair(output, type(self).__name__)
        self._check_shape((y_pred, y))
        self._check_type((y_pred, y))
        return y_pred, y

    def compute(self) -> torch.Tensor | float:
        """The per-class tensor (``average=False``/``None``) or the averaged float.

        Binary input with ``average=False`` gives a 0-dim tensor (a number in
        ``state.metrics``).
        """
        if not self._updated:
            raise NotComputableError(
                f"{type(self).__name__} must have at least one example before it can be computed"
            )
        eps = 0.0 if self._average == "samples" else self.eps
        fraction = self._numerator / (self._denominator + eps)
        if self._average == "weighted":
            return ((fraction @ self._weight) / (self._weight.sum() + self.eps)).item()
        if self._average in ("micro", "samples"):
            return fraction.item()
        if self._average == "macro":
            return fraction.mean().item()
        return fraction


class Precision(_PrecisionRecallBase):
    """Precision ``TP / (TP + FP)`` for binary, multiclass and multilabel data (Ignite's semantics).

    Inputs as for :class:`~distengine.metrics.Accuracy`. ``average``:

    - ``False`` (default): binary input gives one number; multiclass and multilabel inputs
      give a tensor with one value per class / label;
    - ``None``: one value per class, binary input included (as scikit-learn);
    - ``"micro"``: counts of all classes / labels pooled;
    - ``"macro"`` (or ``True``): mean of the per-class values;
    - ``"weighted"``: mean of the per-class values weighted by each class's true count;
    - ``"samples"`` (multilabel only): mean over samples of each sample's precision.

    At world size > 1 the counts are summed across ranks before dividing, so the result
    equals the single-process one (padded rows are never counted).

    Args:
        output_transform: maps the engine's output to ``(y_pred, y)``.
        average: see above.
        is_multilabel: treat equally-shaped ``(N, C, ...)`` inputs as multilabel.
        device: where the counts are accumulated.
        skip_unrolling: see :class:`~distengine.metrics.Metric`.

    Example:
        >>> import torch
        >>> p = Precision(average="macro")
        >>> p.update((torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]), torch.tensor([0, 1, 1])))
        >>> round(p.compute(), 4)
        0.75
    """

    def update(self, output: Sequence[torch.Tensor]) -> None:
        y_pred, y = self._check(output)
        y_pred, y, correct = self._prepare_output((y_pred, y))
        self._count(y_pred, y, correct)
