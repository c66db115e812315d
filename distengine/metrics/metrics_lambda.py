"""A metric computed by a function of other metrics (Ignite's ``MetricsLambda``)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import torch

from distengine.metrics.metric import Metric
from distengine.metrics.usage import MetricUsage

__all__ = ["MetricsLambda"]


class MetricsLambda(Metric, builds_lambdas=True):
    """The value of ``f(*args, **kwargs)`` where metric arguments are replaced by their values.

    Attaching a ``MetricsLambda`` attaches the metrics it uses (they are updated once per
    iteration even if they are also attached on their own, or used by several lambdas), and
    writes only the lambda's value. At world size > 1 the metrics it uses are reduced in the
    engine's one collective and ``f`` sees their reduced values, so ``f`` of exact values is
    exact. Metric arithmetic builds lambdas: ``precision * recall``, ``cm[0]``,
    ``cm.diag().sum()`` (any public method of the value). Making a lambda resets the
    metrics it uses (as in Ignite): build it before updating them.

    Args:
        f: the function; its arguments are ``args`` and ``kwargs`` with every metric replaced
            by its computed value (tensors moved to the CPU).
        *args: metrics or plain values.
        skip_unrolling: see :class:`~distengine.metrics.Metric`.
        metrics_result_mode: see :class:`~distengine.metrics.Metric`.
        **kwargs: metrics or plain values passed by keyword.

    Example:
        >>> from distengine.metrics import Precision, Recall
        >>> precision, recall = Precision(average=False), Recall(average=False)
        >>> f1 = MetricsLambda(lambda p, r: (2 * p * r / (p + r + 1e-20)).mean().item(), precision, recall)
        >>> f1.attach(evaluator, "f1")
        >>> also_f1 = (precision * recall * 2 / (precision + recall + 1e-20)).mean()
        >>> also_f1.attach(evaluator, "also_f1")
        >>> metrics = evaluator.run(loader).metrics
        >>> round(metrics["f1"], 4) == round(float(metrics["also_f1"]), 4)
        True
    """

    _updates_itself = False

    def __init__(
        self,
        f: Callable[..., Any],
        *args: Any,
        skip_unrolling: bool = False,
        metrics_result_mode: str = "both",
        **kwargs: Any,
    ) -> None:
        if not callable(f):
            raise TypeError(f"MetricsLambda needs a callable f, got {type(f).__name__}")
        self.function = f
        self.args = list(args)
        self.kwargs = kwargs
        self.engine: Any = None
        self._updated = False
        super().__init__(
            device="cpu", skip_unrolling=skip_unrolling, metrics_result_mode=metrics_result_mode
        )

    def _parts(self) -> list[Metric]:
        return [
            a for a in itertools.chain(self.args, self.kwargs.values()) if isinstance(a, Metric)
        ]

    def reset(self) -> None:
        for part in self._parts():
            part.reset()
        self._updated = False

    def update(self, output: Any) -> None:
        """Updates every metric it uses (only when not attached to an engine)."""
        if self.engine is not None:
            raise ValueError(
                "MetricsLambda is already attached to an engine, which updates the metrics it "
                "uses: update() is for a lambda used on its own"
            )
        for part in self._parts():
            part.update(output)
        self._updated = True

    def compute(self) -> Any:
        args = [_value_on_cpu(a) for a in self.args]
        kwargs = {k: _value_on_cpu(v) for k, v in self.kwargs.items()}
        return self.function(*args, **kwargs)

    def attach(self, engine: Any, name: str, usage: str | MetricUsage | None = None) -> None:
        """Attaches the lambda and, partially (updated, not written), the metrics it uses."""
        if self._updated:
            raise ValueError(
                "The metrics this MetricsLambda uses were updated through its update(): "
                "reset() it before attaching it to an engine"
            )
        super().attach(engine, name, usage)
        self.engine = engine

    def detach(self, engine: Any, usage: str | MetricUsage | None = None) -> None:
        super().detach(engine, usage)
        self.engine = None

    # --- reducer protocol: the lambda's state is the state of the metrics it uses ----------
    def _leaves(self) -> list[Metric]:
        seen: dict[int, Metric] = {}
        for part in self._parts():
            for leaf in part._leaves():
                seen.setdefault(id(leaf), leaf)
        return list(seen.values())

    def _update_children(self) -> list[Metric]:
        out: list[Metric] = []
        for part in self._parts():
            out.extend(part._update_children())
            if part._updates_itself:
                out.append(part)
        return out

    def rank_state_dict(self) -> dict[str, Any]:
        return {"_updated": self._updated, "parts": [p.rank_state_dict() for p in self._parts()]}

    def _load_rank_state(self, state_dict: Mapping[str, Any]) -> None:
        parts = self._parts()
        given = state_dict.get("parts") if isinstance(state_dict, Mapping) else None
        if not isinstance(given, list) or len(given) != len(parts):
            raise ValueError(
                f"MetricsLambda state must have 'parts', one state per metric it uses "
                f"({len(parts)}), got {state_dict!r:.200}"
            )
        for part, state in zip(parts, given):
            part._load_rank_state(state)
        self._updated = bool(state_dict.get("_updated", False))

    def load_rank_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self._load_rank_state(state_dict)
        self._restored = True


def _value_on_cpu(value: Any) -> Any:
    if isinstance(value, Metric):
        value = value.compute()
    if isinstance(value, torch.Tensor):
        value = value.cpu()
    return value
