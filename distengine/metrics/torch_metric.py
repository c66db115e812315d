"""Any ``torchmetrics.Metric`` on an engine, exact on many ranks, in the engine's one collective.

torchmetrics is an optional dependency (``pip install distengine[torchmetrics]``); this
module imports it only when a :class:`TorchMetric` is made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from distengine.metrics import _output
from distengine.metrics.metric import Metric, NotComputableError

__all__ = ["TorchMetric"]

_COUNTER = "_distengine_updates"


def _torchmetrics() -> Any:
    try:
        import torchmetrics
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "TorchMetric needs torchmetrics: pip install 'distengine[torchmetrics]'"
        ) from e
    return torchmetrics


def _ops_of(metric: Any) -> dict[str, str]:
    """Our op for each state of a torchmetrics metric, or a ``ValueError`` naming the state."""
    from torchmetrics.utilities import data

    known = {
        data.dim_zero_sum: "sum",
        data.dim_zero_mean: "mean",
        data.dim_zero_max: "max",
        data.dim_zero_min: "min",
        data.dim_zero_cat: "cat",
    }
    ops: dict[str, str] = {}
    for name, default in metric._defaults.items():
        fx = metric._reductions.get(name)
        op = known.get(fx) if fx is not None else None
        if op is None:
            shown = "None" if fx is None else getattr(fx, "__name__", repr(fx))
            raise ValueError(
                f"{type(metric).__name__} state {name!r} has dist_reduce_fx={shown}; TorchMetric "
                "reduces only states declared with 'sum', 'mean', 'max', 'min' or 'cat' (a custom "
                "or absent reduction cannot join the engine's collective)"
            )
        if isinstance(default, list) and op != "cat":
            raise ValueError(
                f"{type(metric).__name__} list state {name!r} must use dist_reduce_fx='cat', got {op!r}"
            )
        if name == _COUNTER:
            raise ValueError(
                f"{type(metric).__name__} has a state named {_COUNTER!r}, reserved here"
            )
        ops[name] = op
    return ops


def _copy_state(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to(device, copy=True)
    if isinstance(value, list):
        return [v.detach().to(device, copy=True) for v in value]
    return value


class TorchMetric(Metric):
    """Attaches a ``torchmetrics.Metric`` like one of ours: exact at any world size.

    - **Padding.** Padded rows (``engine.state.batch_padding``) are dropped from every
      tensor of the output before ``metric.update``; a batch of padding only is skipped.
    - **One collective.** The metric's states join the engine's collective at each
      completion event (with every other attached metric); torchmetrics' own
      synchronisation is switched off (``sync_on_compute=False``), so it never runs an
      ``all_gather`` of its own. The result equals the single-process one.
    - **States.** Supported: tensor states declared with ``dist_reduce_fx`` ``"sum"``,
      ``"max"``, ``"min"`` (exact), ``"mean"`` (the mean over ranks, as torchmetrics does)
      and ``"cat"`` (list or tensor states: every rank's rows, concatenated in rank order;
      their lengths differ per rank, so an engine with a ``"cat"`` state adds one small
      gather of lengths before the main one). A state with ``dist_reduce_fx=None`` or a
      custom function raises ``ValueError`` here, naming the state. Values travel as
      float64: integer states are exact up to 2**53.

    The transformed output is passed as ``metric.update(*output)`` for a tuple or list,
    ``metric.update(**output)`` for a mapping, ``metric.update(output)`` otherwise.

    Args:
        metric: a ``torchmetrics.Metric`` (not a ``MetricCollection``: wrap each metric; they
            share the collective anyway). Its ``sync_on_compute`` is set to ``False``.
        output_transform: maps the engine's output to ``update``'s arguments.

    Example:
        >>> import torchmetrics
        >>> f1 = TorchMetric(torchmetrics.F1Score(task="multiclass", num_classes=3, average="macro"))
        >>> f1.attach(evaluator, "f1")
        >>> f1.update((torch.tensor([0, 2, 1]), torch.tensor([0, 1, 1])))
        >>> round(float(f1.compute()), 4)
        0.5556
    """

    required_output_keys = None

    def __init__(self, metric: Any, output_transform: Callable[[Any], Any] = lambda x: x) -> None:
        tm = _torchmetrics()
        if isinstance(metric, tm.MetricCollection):
            raise TypeError(
                "TorchMetric wraps one torchmetrics.Metric; wrap each metric of the "
                "MetricCollection in its own TorchMetric (all of them share one collective)"
            )
        if not isinstance(metric, tm.Metric):
            raise TypeError(f"metric must be a torchmetrics.Metric, got {type(metric).__name__}")
        ops = _ops_of(metric)
        metric.sync_on_compute = False
        metric._to_sync = False
        metric.dist_sync_on_step = False
        self.metric = metric
        self._reductions = {**ops, _COUNTER: "sum"}  # per instance: the metric's own states
        super().__init__(output_transform, device=metric.device, skip_unrolling=True)

    def reset(self) -> None:
        self.metric.reset()
        setattr(self, _COUNTER, 0)

    def update(self, output: Any) -> None:
        """Passes ``output`` to ``metric.update`` (see the class docstring for how)."""
        if isinstance(output, Mapping):
            self.metric.update(**output)
        elif isinstance(output, (tuple, list)):
            self.metric.update(*output)
        else:
            self.metric.update(output)
        setattr(self, _COUNTER, getattr(self, _COUNTER) + 1)

    @torch.no_grad()
    def iteration_completed(self, engine: Any) -> None:
        output = self._output_transform(engine.state.output)
        padding = getattr(engine.state, "batch_padding", 0) or 0
        if padding:
            if isinstance(output, Mapping):
                keys = list(output)
                trimmed, empty = _output.drop_padding([output[k] for k in keys], padding)
                output = dict(zip(keys, trimmed))
            else:
                output, empty = _output.drop_padding(output, padding)
            if empty:
                return
        self.update(output)

    def compute(self) -> Any:
        """Returns the wrapped metric's ``compute()`` over all ranks' states (reduced first)."""
        if getattr(self, _COUNTER) == 0:
            raise NotComputableError(
                f"{type(self.metric).__name__} must have at least one update before it can be computed"
            )
        metric = self.metric
        saved_count, saved_sync = metric._update_count, metric._to_sync
        metric._computed = None
        metric._update_count = max(saved_count, 1)  # another rank's updates count here too
        metric._to_sync = False
        try:
            return metric.compute()
        finally:
            metric._computed = None
            metric._update_count, metric._to_sync = saved_count, saved_sync

    # --- the reducer reads and sets the wrapped metric's states -------------------------
    def _reducible_state(self) -> dict[str, Any]:
        state = {name: getattr(self.metric, name) for name in self._reductions if name != _COUNTER}
        state[_COUNTER] = getattr(self, _COUNTER)
        return state

    @contextmanager
    def _state_view(self, values: Mapping[str, Any]) -> Iterator[None]:
        inner = {k: v for k, v in values.items() if k != _COUNTER}
        saved = {k: getattr(self.metric, k) for k in inner}
        own = {k: v for k, v in values.items() if k == _COUNTER}
        with super()._state_view(own):
            for key, value in inner.items():
                setattr(self.metric, key, value)
            self.metric._computed = None
            try:
                yield
            finally:
                for key, value in saved.items():
                    setattr(self.metric, key, value)
                self.metric._computed = None

    def rank_state_dict(self) -> dict[str, Any]:
        """This rank's states of the wrapped metric and the update count (unreduced)."""
        cpu = torch.device("cpu")
        return {
            "states": {
                name: _copy_state(getattr(self.metric, name), cpu)
                for name in self._reductions
                if name != _COUNTER
            },
            _COUNTER: getattr(self, _COUNTER),
        }

    def _load_rank_state(self, state_dict: Mapping[str, Any]) -> None:
        if not isinstance(state_dict, Mapping) or not isinstance(state_dict.get("states"), Mapping):
            raise TypeError(
                "TorchMetric state must be a mapping with 'states' (as rank_state_dict returns), "
                f"got {type(state_dict).__name__}"
            )
        names = [n for n in self._reductions if n != _COUNTER]
        missing = [n for n in names if n not in state_dict["states"]]
        if missing:
            raise ValueError(
                f"TorchMetric state for {type(self.metric).__name__} is missing states {missing}"
            )
        for name in names:
            setattr(self.metric, name, _copy_state(state_dict["states"][name], self.metric.device))
        self.metric._computed = None
        setattr(self, _COUNTER, int(state_dict.get(_COUNTER, 0)))
