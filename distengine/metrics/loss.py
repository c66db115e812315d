"""Average of a loss function over all examples, kept as (weighted sum, count)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch

from distengine.metrics.metric import Metric, NotComputableError

__all__ = ["Loss"]


class Loss(Metric):
    """Average of ``loss_fn`` over all examples seen (reduced across ranks as sum / count).

    Each batch adds ``loss_fn(y_pred, y, **kwargs) * batch_size(y)`` to a float64 sum and
    ``batch_size(y)`` to the count, so the result is the exact per-example mean whatever the
    batch and shard sizes are (not an average of averages).

    ``update`` takes ``(y_pred, y)`` or ``(y_pred, y, kwargs)``, where ``kwargs`` is a dict of
    extra keyword arguments for ``loss_fn``; a mapping output needs ``"y_pred"`` and ``"y"``
    and may hold ``"criterion_kwargs"``.

    Args:
        loss_fn: returns the *average* loss of a batch as a 0-dim tensor.
        output_transform: maps the engine's output to ``update``'s input.
        batch_size: returns the number of examples in ``y`` (``len`` by default).
        device: where the sum is accumulated.
        skip_unrolling: see :class:`~distengine.metrics.Metric`.

    Example:
        >>> import torch
        >>> loss = Loss(torch.nn.functional.mse_loss)
        >>> loss.update((torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0])))
        >>> loss.compute()
        2.0
    """

    required_output_keys: ClassVar[tuple[str, ...] | None] = ("y_pred", "y", "criterion_kwargs")
    _optional_output_keys: ClassVar[tuple[str, ...]] = ("criterion_kwargs",)
    _reductions: ClassVar[dict[str, str]] = {"_sum": "sum", "_num_examples": "sum"}

    def __init__(
        self,
        loss_fn: Callable[..., torch.Tensor],
        output_transform: Callable[[Any], Any] = lambda x: x,
        batch_size: Callable[[Any], int] = len,
        device: str | torch.device = "cpu",
        skip_unrolling: bool = False,
    ) -> None:
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if not callable(batch_size):
            raise TypeError(f"batch_size must be callable, got {type(batch_size).__name__}")
        self._loss_fn = loss_fn
        self._batch_size = batch_size
        super().__init__(output_transform, device=device, skip_unrolling=skip_unrolling)

    def reset(self) -> None:
        self._sum = torch.tensor(0.0, dtype=torch.float64, device=self._device)
        self._num_examples = 0

    def update(self, output: Sequence[Any]) -> None:
        if not (isinstance(output, Sequence) and len(output) in (2, 3)):
            raise TypeError(
                "Loss.update expects (y_pred, y) or (y_pred, y, kwargs), got "
                f"{type(output).__name__}"
                + (f" of length {len(output)}" if isinstance(output, Sequence) else "")
            )
        y_pred, y = output[0], output[1]
        kwargs = output[2] if len(output) == 3 else {}
        if not isinstance(kwargs, Mapping):
            raise TypeError(
                f"The third item of a Loss output must be a dict of loss_fn keyword arguments, "
                f"got {type(kwargs).__name__}"
            )
        average_loss = self._loss_fn(y_pred, y, **kwargs)
        if not isinstance(average_loss, torch.Tensor) or average_loss.ndim != 0:
            shape = tuple(average_loss.shape) if isinstance(average_loss, torch.Tensor) else None
            raise ValueError(
                "loss_fn must return the batch's average loss as a 0-dim tensor, got "
                f"{type(average_loss).__name__}" + (f" of shape {shape}" if shape else "")
            )
        n = self._batch_size(y)
        if average_loss.requires_grad:  # not under the engine's no_grad: keep no graph
            average_loss = average_loss.detach()
        self._sum += average_loss.to(self._device, torch.float64) * n
        self._num_examples += n

    def compute(self) -> float:
        if self._num_examples == 0:
            raise NotComputableError(
                "Loss must have at least one example before it can be computed"
            )
        return self._sum.item() / self._num_examples
