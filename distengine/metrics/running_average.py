"""Exponential running average of a metric or of the process function's output."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from numbers import Number
from typing import Any, ClassVar

import torch

from distengine.metrics._output import drop_padding, select_required
from distengine.metrics.metric import Metric, NotComputableError
from distengine.metrics.usage import (
    MetricUsage,
    RunningBatchWise,
    SingleEpochRunningBatchWise,
)

__all__ = ["RunningAverage"]


def _identity(x: Any) -> Any:
    return x


class RunningAverage(Metric):
    """Running average ``v = alpha * v + (1 - alpha) * x`` of a metric or of the engine output.

    With ``src`` a :class:`Metric`, each iteration ``src`` is updated with the batch (its own
    ``output_transform``, padding rows dropped), ``x`` is ``src``'s value for that batch and
    ``src`` is reset. With ``src=None``, ``x`` is ``output_transform(engine.state.output)``
    (a number or tensor, typically the loss). The first ``x`` sets ``v``.

    The value is written to ``engine.state.metrics[name]`` at every ``ITERATION_COMPLETED``.
    It is reset at ``STARTED`` (usage ``RunningBatchWise``, the default) or at each
    ``EPOCH_STARTED`` (``SingleEpochRunningBatchWise``, or the deprecated ``epoch_bound=True``).
    With ``RunningEpochWise``, ``src`` accumulates over a whole epoch and its epoch value
    (reduced over all ranks, in the epoch's one collective) is folded in at
    ``EPOCH_COMPLETED``: a running average across epochs.

    **Distributed behaviour.** A running average adds no collective of its own per
    iteration: during an epoch, ``state.metrics[name]`` shows **this rank's** running value
    (so ranks may show different values). At ``EPOCH_COMPLETED`` the value travels in the
    epoch's shared metrics collective and ``state.metrics[name]`` becomes the mean of the
    ranks' running values, identical on every rank. The update is linear, so for
    ``src=None`` this equals the running average of the per-iteration mean over ranks (what
    Ignite computes with one all-reduce per iteration). ``compute()`` called directly is a
    collective and returns the same mean. At world size 1 all of this is Ignite's behaviour.

    Args:
        src: the metric to average, or ``None`` to average the transformed output.
        alpha: decay factor in ``(0, 1]``.
        output_transform: required when ``src`` is ``None``, must be ``None`` otherwise.
        epoch_bound: ``True`` resets the average at each epoch start, ``False`` never;
            ``None`` lets ``attach``'s ``usage`` decide.
        device: where the value is kept when ``src`` is ``None`` (``src``'s device otherwise).
        skip_unrolling: see :class:`~distengine.metrics.Metric`.

    Example:
        >>> ra = RunningAverage(output_transform=lambda loss: loss)
        >>> ra.attach(trainer, "running_loss")
        >>> trainer.run(loader, max_epochs=1).metrics["running_loss"] > 0
        True
        >>> ra = RunningAverage(output_transform=lambda out: out["loss"])
        >>> ra.update(1.0); ra.update(0.0)
        >>> round(ra.compute(), 4)
        0.98
    """

    required_output_keys: ClassVar[tuple[str, ...] | None] = None
    _reductions: ClassVar[dict[str, str]] = {"_value": "sum", "_num_values": "sum"}
    _default_usage: ClassVar[type[MetricUsage]] = RunningBatchWise

    def __init__(
        self,
        src: Metric | None = None,
        alpha: float = 0.98,
        output_transform: Callable[[Any], Any] | None = None,
        epoch_bound: bool | None = None,
        device: str | torch.device | None = None,
        skip_unrolling: bool = False,
    ) -> None:
        if not (src is None or isinstance(src, Metric)):
            raise TypeError(f"src must be a Metric or None, got {type(src).__name__}")
        if isinstance(alpha, bool) or not isinstance(alpha, Number) or not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be a number in (0, 1], got {alpha!r}")
        if epoch_bound is not None:
            if not isinstance(epoch_bound, bool):
                raise TypeError(
                    f"epoch_bound must be a bool or None, got {type(epoch_bound).__name__}"
                )
            warnings.warn(
                "epoch_bound is deprecated: use attach(..., usage=SingleEpochRunningBatchWise()) "
                "for epoch_bound=True and usage=RunningBatchWise() for epoch_bound=False",
                stacklevel=2,
            )
        if src is not None:
            if output_transform is not None:
                raise ValueError(
                    "output_transform must be None when src is a Metric (src applies its own), "
                    f"got {output_transform!r}"
                )
            if device is not None:
                raise ValueError(
                    f"device must be None when src is a Metric (src's device is used), got {device!r}"
                )
            output_transform, device = _identity, src.device
        elif output_transform is None:
            raise ValueError(
                "output_transform is required when src is None: it maps the engine's output "
                "to the value to average"
            )
        self.src = src
        self.alpha = float(alpha)
        self.epoch_bound = epoch_bound
        super().__init__(output_transform, device=device or "cpu", skip_unrolling=skip_unrolling)

    def reset(self) -> None:
        self._value: float | torch.Tensor | None = None
        self._num_values = 0
        if self.src is not None:
            self.src.reset()

    def update(self, output: Any = None) -> None:
        """Folds one value in: ``src``'s value for the batch (``output`` ignored) or ``output``."""
        if self.src is not None:
            try:
                value = self.src._compute_local()
            except NotComputableError:
                return  # the batch held only padding: nothing to average
            finally:
                self.src.reset()
        elif isinstance(output, torch.Tensor):
            value = output.detach().to(self._device, copy=True)
            if not value.is_floating_point():
                value = value.to(torch.get_default_dtype())
        elif isinstance(output, Number) and not isinstance(output, bool):
            value = float(output)
        else:
            raise TypeError(
                f"RunningAverage averages numbers or tensors, got {type(output).__name__}"
            )
        if self._value is None:
            self._value, self._num_values = value, 1
        else:
            self._value = self._value * self.alpha + (1.0 - self.alpha) * value

    def compute(self) -> float | torch.Tensor:
        if self._num_values == 0:
            raise NotComputableError(
                "RunningAverage must have at least one value before it can be computed"
            )
        if self._num_values == 1:
            return self._value  # type: ignore[return-value]
        return self._value / self._num_values  # type: ignore[operator]

    @torch.no_grad()
    def iteration_completed(self, engine: Any) -> None:
        """Folds in ``src``'s current value (``src`` is updated by its own handler, as in
        Ignite) or the transformed engine output (padding dropped)."""
        if self.src is not None:
            self.update()
            return
        output = select_required(self._output_transform(engine.state.output), self)
        padding = getattr(engine.state, "batch_padding", 0) or 0
        if padding:  # a padding batch's value (e.g. its loss) is not averaged in
            output, empty = drop_padding(output, padding)
            if empty:
                return
        self.update(output)

    def _update_children(self) -> list[Metric]:
        return [] if self.src is None else [self.src]

    def _reduced_children(self) -> list[Metric]:
        return [] if self.src is None else [self.src]

    def _check_usage(self, usage: str | MetricUsage | None) -> MetricUsage:
        usage = super()._check_usage(usage)
        if self.epoch_bound is not None:
            return SingleEpochRunningBatchWise() if self.epoch_bound else RunningBatchWise()
        return usage

    def _reducible_state(self) -> dict[str, Any]:
        return {
            "_value": 0.0 if self._value is None else self._value,
            "_num_values": self._num_values,
        }

    def rank_state_dict(self) -> dict[str, Any]:
        state = super().rank_state_dict()
        if self.src is not None:
            state["src"] = self.src.rank_state_dict()
        return state

    def load_rank_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_rank_state_dict(state_dict)
        if self.src is not None:
            if not isinstance(state_dict.get("src"), Mapping):
                raise ValueError(
                    "RunningAverage with a src metric needs the src's state under key 'src', "
                    f"given keys {list(state_dict)}"
                )
            self.src.load_rank_state_dict(state_dict["src"])
