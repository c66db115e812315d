"""Recall: exact per-class counts summed across ranks."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from distengine.metrics.precision import _PrecisionRecallBase

__all__ = ["Recall"]


class Recall(_PrecisionRecallBase):
    """Recall ``TP / (TP + FN)`` for binary, multiclass and multilabel data (Ignite's semantics).

    Inputs and ``average`` as for :class:`~distengine.metrics.Precision` (``"samples"``: mean
    over samples of each sample's recall). At world size > 1 the counts are summed across
    ranks before dividing, so the result equals the single-process one.

    Args:
        output_transform: maps the engine's output to ``(y_pred, y)``.
        average: ``False`` (default), ``None``, ``"micro"``, ``"macro"`` (or ``True``),
            ``"weighted"`` or ``"samples"``.
        is_multilabel: treat equally-shaped ``(N, C, ...)`` inputs as multilabel.
        device: where the counts are accumulated.
        skip_unrolling: see :class:`~distengine.metrics.Metric`.

    Example:
        >>> import torch
        >>> r = Recall(average=False)
        >>> r.update((torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]), torch.tensor([0, 1, 1])))
        >>> r.compute().tolist()
        [1.0, 0.5]
    """

    def update(self, output: Sequence[torch.Tensor]) -> None:
        y_pred, y = self._check(output)
        _, y, correct = self._prepare_output((y_pred, y))
        self._count(y, y, correct)
