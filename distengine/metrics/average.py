"""Arithmetic mean of a value over all examples, kept as (float64 sum, count)."""

from __future__ import annotations

from collections.abc import Callable
from numbers import Number
from typing import Any, ClassVar

import torch

from distengine.metrics.metric import Metric, NotComputableError

__all__ = ["Average"]


class Average(Metric):
    """Arithmetic mean of the (transformed) engine output, with Ignite's counting rule.

    Each ``update`` receives a number or a tensor ``x``:

    - a number, a 0-dim or a 1-dim tensor counts as **one** example (a 1-dim tensor is one
      vector-valued example; the mean is then taken element-wise);
    - an N-dim tensor (N > 1) holds ``x.shape[0]`` examples: ``x.sum(dim=0)`` is added.

    The state is a float64 sum and a count, both summed across ranks. At world size > 1,
    tensor-valued averages need at least one update on every rank (the ranks must agree on
    the shape of the sum).

    Args:
        output_transform: maps the engine's output to the value to average.
        device: where the sum is accumulated.
        skip_unrolling: see :class:`~distengine.metrics.Metric`.

    Example:
        >>> import torch
        >>> avg = Average()
        >>> for v in (1.0, 2.0, 6.0):
        ...     avg.update(v)
        >>> avg.compute().item()
        3.0
    """

    required_output_keys: ClassVar[tuple[str, ...] | None] = None
    _reductions: ClassVar[dict[str, str]] = {"accumulator": "sum", "num_examples": "sum"}
    _fixed_state_shapes: ClassVar[bool] = False  # shaped by the first update

    def __init__(
        self,
        output_transform: Callable[[Any], Any] = lambda x: x,
        device: str | torch.device = "cpu",
        skip_unrolling: bool = False,
    ) -> None:
        super().__init__(output_transform, device=device, skip_unrolling=skip_unrolling)

    def reset(self) -> None:
        self.accumulator = torch.tensor(0.0, dtype=torch.float64, device=self._device)
        self.num_examples = 0

    def update(self, output: float | torch.Tensor) -> None:
        if isinstance(output, bool) or not isinstance(output, (Number, torch.Tensor)):
            raise TypeError(
                f"Average.update expects a number or a tensor, got {type(output).__name__}"
            )
        if isinstance(output, torch.Tensor):
            output = output.detach().to(self._device, torch.float64)
            if output.ndim > 1:
                self.accumulator = self.accumulator + output.sum(dim=0)
                self.num_examples += output.shape[0]
                return
        self.accumulator = self.accumulator + output
        self.num_examples += 1

    def compute(self) -> torch.Tensor:
        if self.num_examples < 1:
            raise NotComputableError(
                "Average must have at least one example before it can be computed"
            )
        return self.accumulator / self.num_examples
