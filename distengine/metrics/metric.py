"""The ``Metric`` base class: state kept as sums and counts, declared for one cross-rank reduction."""

from __future__ import annotations

import functools
from abc import ABCMeta, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch

import distengine.distributed as idist
from distengine.exceptions import NotComputableError
from distengine.metrics import _output
from distengine.metrics._state import in_state_view, loaded_value, state_value, state_views
from distengine.metrics.arithmetic import LambdaOperators
from distengine.metrics.attachment import reducer_of
from distengine.metrics.decorators import reinit__is_reduced, sync_all_reduce
from distengine.metrics.reduction import REDUCTION_OPS, reduce_states
from distengine.metrics.usage import (
    BatchFiltered,
    BatchWise,
    EpochWise,
    MetricUsage,
    RunningBatchWise,
    RunningEpochWise,
    SingleEpochRunningBatchWise,
    as_usage,
)

__all__ = [
    "Metric",
    "NotComputableError",
    "MetricUsage",
    "EpochWise",
    "BatchWise",
    "BatchFiltered",
    "RunningEpochWise",
    "RunningBatchWise",
    "SingleEpochRunningBatchWise",
    "sync_all_reduce",
    "reinit__is_reduced",
]


_STATE_KEY = "__metric_state_per_rank"
_RESULT_MODES = ("flatten", "named", "both")


def _reducing(compute: Callable[[Metric], Any]) -> Callable[[Metric], Any]:
    """Wraps a subclass's ``compute`` so that, at world size > 1, it sees the reduced state."""

    @functools.wraps(compute)
    def wrapper(self: Metric) -> Any:
        # Inside a reduced (or deliberately local) view the attributes already hold the
        # values to compute from; nested ``super().compute()`` calls land here too.
        if in_state_view(self):
            return compute(self)
        units = self._leaves()
        if not any(u._reductions for u in units):
            return compute(self)
        reduced = reduce_states(units)
        if reduced is None:  # world size 1: no collective
            return compute(self)
        with state_views(units, reduced), self._state_view({}):
            return compute(self)

    wrapper._distengine_reducing = True  # type: ignore[attr-defined]
    return wrapper


# The package-internal protocol of Metric. Besides the public API, a metric answers these
# members for the other modules of distengine.metrics (a single underscore: internal to the
# package, not to the class; users neither call nor override them):
#   _leaves(), _update_children(), _updates_itself, _reduced_children()
#       which metrics an attached entry updates and reduces (attachment.py, metrics_lambda.py)
#   _reducible_state(), _state_shaped(), _reductions   what is reduced (reduction.py)
#   _state_view(), _compute_local()    computing from prepared states (_state.py,
#       attachment.py, running_average.py)
#   _load_rank_state(), _take_restored()   restoring (_state.py, metrics_lambda.py, attachment.py)
#   _metrics_result_mode, _optional_output_keys   writing results (_output.py, attachment.py)
# They read, or change the metric through its own methods: no other module writes a
# metric's fields. tests/unit/tooling/test_layers.py keeps distengine's other packages from them.
class Metric(LambdaOperators, metaclass=ABCMeta):
    """Base class of all metrics: ``reset``, ``update``, ``compute``, and engine attachment.

    A metric keeps its state as sums, counts, maxima or minima and **declares** it in the
    class attribute ``_reductions`` (attribute name -> ``"sum"``, ``"max"``, ``"min"`` or
    ``"prod"``; Ignite's ``@sync_all_reduce`` on ``compute`` declares the same). At world
    size > 1, ``compute()`` first reduces the declared state across ranks (one collective),
    then computes from the reduced values; the local state is left as it was. All metrics
    attached to one engine are reduced together, in one collective per completion event.
    A metric that declares nothing is computed from this rank's state. At world size > 1,
    ``compute()`` (and :meth:`state_dict`) is a collective: call it on every rank.

    Subclasses implement ``reset``, ``update`` and ``compute``; ``compute`` reads the declared
    attributes and raises :class:`NotComputableError` when nothing was counted.

    The transformed engine output may be a tuple ``(y_pred, y)`` or a mapping with the keys
    in ``required_output_keys`` (``("y_pred", "y")`` by default). When
    ``engine.state.batch_padding`` is ``k > 0``, the last ``k`` rows of every tensor (and
    list) in it are dropped before ``update``: padded duplicates are never counted.

    Metrics combine with arithmetic, indexing and method calls into a
    :class:`~distengine.metrics.MetricsLambda` (``precision * recall``, ``cm[0]``,
    ``cm.diag().sum()``), computed from the reduced state of the metrics it uses.

    Args:
        output_transform: maps ``engine.state.output`` to what ``update`` expects.
        device: where the state is accumulated (CPU by default).
        skip_unrolling: pass ``(list_of_y_pred, list_of_y)`` to ``update`` as it is instead
            of updating once per pair.
        metrics_result_mode: for a mapping result, ``"flatten"`` writes each key to
            ``state.metrics``, ``"named"`` writes the mapping under the metric's name,
            ``"both"`` (default) does both.

    Example:
        >>> import torch
        >>> class MaxError(Metric):
        ...     _reductions = {"_max": "max", "_count": "sum"}
        ...     def reset(self):
        ...         self._max, self._count = 0.0, 0
        ...     def update(self, output):
        ...         y_pred, y = output
        ...         self._max = max(self._max, (y_pred - y).abs().max().item())
        ...         self._count += len(y)
        ...     def compute(self):
        ...         if self._count == 0:
        ...             raise NotComputableError("MaxError needs at least one example")
        ...         return self._max
        >>> m = MaxError()
        >>> m.update((torch.tensor([1.0, 2.0]), torch.tensor([1.5, 4.0])))
        >>> m.compute()
        2.0
    """

    _reductions: ClassVar[Mapping[str, str]] = {}
    # Defaults for a subclass that skips ``Metric.__init__`` (Ignite allows it).
    _device = torch.device("cpu")
    _skip_unrolling = False
    _metrics_result_mode = "both"
    _view_depth = 0
    _restored = False
    # Ignite's (name-mangled) key of state_dict()
    __state_dict_key_per_rank = _STATE_KEY
    # Further attributes that are part of the per-rank state but are not reduced.
    _extra_rank_state: ClassVar[tuple[str, ...]] = ()
    # Ignite's list of state attributes (a subclass written for Ignite may set it).
    _state_dict_all_req_keys: ClassVar[tuple[str, ...]] = ()
    # False: the declared state takes its shape from the data (see reduction.py).
    _fixed_state_shapes: ClassVar[bool] = True
    # True: ``update`` accepts a batch with no rows (a rank's all-padding batch), so that a
    # data-shaped state gets its shape on every rank at the same iteration.
    _updates_on_empty_batch: ClassVar[bool] = False
    _default_usage: ClassVar[type[MetricUsage]] = EpochWise
    # False for a metric that is only a function of others (MetricsLambda): never updated.
    _updates_itself: ClassVar[bool] = True
    required_output_keys: ClassVar[tuple[str, ...] | None] = ("y_pred", "y")
    # Keys of ``required_output_keys`` that a mapping output may leave out.
    _optional_output_keys: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        compute = cls.__dict__.get("compute")
        declared = getattr(compute, "_sync_all_reduce", None)
        if declared and "_reductions" not in cls.__dict__:
            cls._reductions = {**cls._reductions, **declared}
        reductions = cls.__dict__.get("_reductions")
        if reductions is not None:
            if not isinstance(reductions, Mapping):
                raise TypeError(
                    f"{cls.__name__}._reductions must be a mapping of attribute name to op, "
                    f"got {type(reductions).__name__}"
                )
            for attr, op in reductions.items():
                if not isinstance(attr, str) or op not in REDUCTION_OPS:
                    raise ValueError(
                        f"{cls.__name__}._reductions maps attribute names to one of "
                        f"{sorted(REDUCTION_OPS)}, got {attr!r}: {op!r}"
                    )
        if compute is not None and not getattr(compute, "_distengine_reducing", False):
            cls.compute = _reducing(compute)  # type: ignore[method-assign]
        if "_state_dict_all_req_keys" not in cls.__dict__:
            # Ignite's name for the list of state attributes: ours, unless the class sets it.
            cls._state_dict_all_req_keys = tuple(
                dict.fromkeys((*cls._reductions, *cls._extra_rank_state))
            )

    def __init__(
        self,
        output_transform: Callable[[Any], Any] = lambda x: x,
        device: str | torch.device = "cpu",
        skip_unrolling: bool = False,
        metrics_result_mode: str = "both",
    ) -> None:
        if not callable(output_transform):
            raise TypeError(
                f"Argument output_transform must be callable, got {type(output_transform).__name__}"
            )
        if not isinstance(device, (str, torch.device)):
            raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
        if metrics_result_mode not in _RESULT_MODES:
            raise ValueError(
                f"metrics_result_mode must be one of {list(_RESULT_MODES)}, got {metrics_result_mode!r}"
            )
        self._output_transform = output_transform
        self._device = torch.device(device)
        self._skip_unrolling = bool(skip_unrolling)
        self._metrics_result_mode = metrics_result_mode
        self._view_depth = 0
        self._restored = False
        self.reset()

    # --- the three methods a metric implements -----------------------------------------
    @abstractmethod
    def reset(self) -> None:
        """Sets the state to "nothing seen". Called at the start of each epoch (or batch)."""

    @abstractmethod
    def update(self, output: Any) -> None:
        """Adds one batch's transformed output to the state."""

    @abstractmethod
    def compute(self) -> Any:
        """Returns the metric's value (reduced over all ranks at world size > 1)."""

    @property
    def device(self) -> torch.device:
        """The device the state is accumulated on."""
        return self._device

    @property
    def output_transform(self) -> Callable[[Any], Any]:
        """The callable that maps the engine's output to ``update``'s input."""
        return self._output_transform

    # --- Ignite's per-event helpers (the engine attachment calls the same code) --------
    def started(self, engine: Any) -> None:
        """Resets the metric; what ``attach`` runs at the usage's start event."""
        self.reset()

    def iteration_completed(self, engine: Any) -> None:
        """Updates the metric from ``engine.state.output`` (transformed, padding dropped),
        without recording gradients.

        Example:
            >>> from distengine.metrics import Accuracy
            >>> metric = Accuracy()
            >>> evaluator.state.output = (torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 0]))
            >>> metric.iteration_completed(evaluator)
            >>> metric.compute()
            0.5
        """
        if torch.is_grad_enabled():
            with torch.no_grad():
                self._update_from(engine)
        else:  # the engine's reducer disabled gradients once for all its metrics
            self._update_from(engine)

    def _update_from(self, engine: Any) -> None:
        transform = self._output_transform
        staged = isinstance(transform, _output.SampleTransform)
        output = (transform.before if staged else transform)(engine.state.output)
        output = _output.select_required(output, self)
        padding = getattr(engine.state, "batch_padding", 0) or 0
        if padding:
            output, empty = _output.drop_padding(output, padding)
            if empty and not self._updates_on_empty_batch:
                return
        if staged:
            output = transform.after(output)
        if not self._skip_unrolling:
            pairs = _output.unrolled_pairs(output)
            if pairs is not None:
                for pair in pairs:
                    self.update(pair)
                return
        self.update(output)

    def completed(self, engine: Any, name: str) -> None:
        """Computes the metric (a collective at world size > 1) and writes it to ``state.metrics``."""
        _output.write_result(engine, name, self.compute(), self._metrics_result_mode)

    # --- engine attachment ----------------------------------------------------------------
    def attach(self, engine: Any, name: str, usage: str | MetricUsage | None = None) -> None:
        """Attaches the metric to ``engine`` under ``name`` in ``engine.state.metrics``.

        All metrics of one engine share one reducer: their states are reduced across ranks
        in one collective per completion event. The metric also becomes part of the
        engine's per-rank state (key ``"metric:{name}"``), so a mid-epoch resume continues
        the epoch's counts. Attach metrics before a handler that saves the engine on
        ``ITERATION_COMPLETED`` (e.g. ``Checkpoint``): handlers run in the order they were
        added, so the saved state then includes that iteration's update.

        Args:
            engine: the engine.
            name: key in ``engine.state.metrics``.
            usage: a :class:`~distengine.metrics.MetricUsage` or its ``usage_name``:
                ``"epoch_wise"`` (default: reset at ``EPOCH_STARTED``, written at
                ``EPOCH_COMPLETED``), ``"batch_wise"`` (reset at ``ITERATION_STARTED``,
                written at ``ITERATION_COMPLETED``), ``"running_epoch_wise"``,
                ``"running_batch_wise"``, ``"single_epoch_running_batch_wise"``, or
                ``BatchFiltered(every=...)``.

        Example:
            >>> from distengine.metrics import Accuracy
            >>> Accuracy().attach(evaluator, "accuracy")
            >>> evaluator.run(loader).metrics["accuracy"]
            0.4375
        """
        if not isinstance(name, str):
            raise TypeError(f"Metric name must be a str, got {type(name).__name__}")
        reducer_of(engine, create=True).add(self, name, self._check_usage(usage))

    def detach(self, engine: Any, usage: str | MetricUsage | None = None) -> None:
        """Detaches the metric (all its names for this usage) from ``engine``.

        Example:
            >>> from distengine.metrics import Accuracy
            >>> metric = Accuracy()
            >>> metric.attach(evaluator, "accuracy")
            >>> metric.detach(evaluator)
            >>> metric.is_attached(evaluator)
            False
        """
        usage = self._check_usage(usage)
        reducer = reducer_of(engine, create=False)
        if reducer is not None:
            reducer.remove(self, usage)

    def is_attached(self, engine: Any, usage: str | MetricUsage | None = None) -> bool:
        """Returns whether the metric is attached to ``engine`` with ``usage``.

        Example:
            >>> from distengine.metrics import Accuracy
            >>> metric = Accuracy()
            >>> metric.attach(evaluator, "accuracy")
            >>> metric.is_attached(evaluator, usage="epoch_wise")
            True
        """
        usage = self._check_usage(usage)
        reducer = reducer_of(engine, create=False)
        return reducer is not None and reducer.has(self, usage)

    def _check_usage(self, usage: str | MetricUsage | None) -> MetricUsage:
        return self._default_usage() if usage is None else as_usage(usage)

    # --- per-rank state (checkpoints) -----------------------------------------------------
    def _state_names(self) -> tuple[str, ...]:
        names = (*self._reductions, *self._extra_rank_state, *self._state_dict_all_req_keys)
        return tuple(dict.fromkeys(names))

    def rank_state_dict(self) -> dict[str, Any]:
        """This rank's (unreduced) state: the declared attributes and the extra ones.

        Values may be numbers, tensors (copied to the CPU), ``None``, other metrics (their
        own state) and lists or dicts of these.

        Example:
            >>> from distengine.metrics import Accuracy
            >>> metric, other = Accuracy(), Accuracy()
            >>> metric.update((torch.tensor([[0.9, 0.1]]), torch.tensor([0])))
            >>> sd = metric.rank_state_dict()
            >>> other.load_rank_state_dict(sd)
            >>> other.compute()
            1.0
        """
        state = {}
        for key in self._state_names():
            if key not in self.__dict__:
                raise ValueError(
                    f"{type(self).__name__} declares state {key!r} but has no such attribute"
                )
            state[key] = state_value(getattr(self, key), f"{type(self).__name__}.{key}")
        return state

    def _take_restored(self) -> bool:
        """Whether a loaded state waits to be kept at the next reset; clears the mark.

        The reducer asks it at the start a metric resets on (and keeps the state when
        that start resumes the interrupted run or epoch).
        """
        restored, self._restored = self._restored, False
        return restored

    def load_rank_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores a state taken by :meth:`rank_state_dict` (e.g. after a mid-epoch resume).

        The next reset at the start of the interrupted epoch is skipped, so the epoch's
        value covers the batches seen before and after the restart.
        """
        self._load_rank_state(state_dict)
        self._restored = True

    def _load_rank_state(self, state_dict: Mapping[str, Any]) -> None:
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"{type(self).__name__}.load_rank_state_dict expects a mapping, "
                f"got {type(state_dict).__name__}"
            )
        missing = [key for key in self._state_names() if key not in state_dict]
        if missing:
            raise ValueError(
                f"{type(self).__name__} rank state must have keys {list(self._state_names())}, "
                f"missing {missing} (given {list(state_dict)})"
            )
        for key in self._state_names():
            current = self.__dict__.get(key)
            setattr(self, key, loaded_value(current, state_dict[key], self._device))

    def state_dict(self) -> OrderedDict:
        """Returns the state of every rank in Ignite's format: ``{"__metric_state_per_rank": [rank 0's state, rank 1's, ...]}``.

        At world size > 1 the ranks' states are gathered (a collective: call it on every
        rank). Attached metrics are already saved with the engine (``Engine.rank_state_dict``);
        this is for a metric used on its own.

        Example:
            >>> from distengine.metrics import Accuracy
            >>> m, other = Accuracy(), Accuracy()
            >>> m.update((torch.tensor([[0.9, 0.1], [0.8, 0.2]]), torch.tensor([0, 1])))
            >>> other.load_state_dict(m.state_dict())
            >>> other.compute()
            0.5
        """
        mine = self.rank_state_dict()
        per_rank = idist.all_gather(mine) if idist.get_world_size() > 1 else [mine]
        return OrderedDict([(_STATE_KEY, per_rank)])

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Loads this rank's entry of a :meth:`state_dict` saved at the same world size."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"Argument state_dict should be a dictionary, but given {type(state_dict).__name__}"
            )
        if not (len(state_dict) == 1 and _STATE_KEY in state_dict):
            raise ValueError(
                "Incorrect state_dict object: expected what Metric.state_dict() returns, a "
                f"mapping with the single key {_STATE_KEY!r}, but given keys {list(state_dict)}"
            )
        per_rank = state_dict[_STATE_KEY]
        world_size = idist.get_world_size()
        if not isinstance(per_rank, Sequence) or len(per_rank) != world_size:
            size = len(per_rank) if isinstance(per_rank, Sequence) else type(per_rank).__name__
            raise ValueError(
                "Incorrect state_dict object: expected a list of state dicts, one per rank "
                f"(world size {world_size}), but got {size}"
            )
        self._load_rank_state(per_rank[idist.get_rank()])

    # Checkpoint stores an object whose state_dict is a collective (a metric's: Ignite's format
    # gathers every rank's state) through its rank_state_dict, gathered on every rank, instead
    # of calling state_dict on the writer alone (distengine.checkpoint.content.rank_state_only).
    state_dict_is_collective: ClassVar[bool] = True

    # --- views used by the reducer --------------------------------------------------------
    def _leaves(self) -> list[Metric]:
        """The metrics whose declared state ``compute`` reads: itself (a lambda: its parts)."""
        return [self]

    def _update_children(self) -> list[Metric]:
        """Metrics the reducer updates (each once) every iteration before this one."""
        return []

    def _reduced_children(self) -> list[Metric]:
        """Metrics reduced before this one's own update at ``EPOCH_COMPLETED`` (running_epoch_wise)."""
        return []

    def _reducible_state(self) -> dict[str, Any]:
        """The declared attributes, as numbers or tensors, to be packed for the collective."""
        return {key: getattr(self, key) for key in self._reductions}

    def _state_shaped(self) -> bool:
        """For a data-shaped state: True once an update gave it its shape (same on all ranks)."""
        return False

    @contextmanager
    def _state_view(self, values: Mapping[str, Any]) -> Iterator[None]:
        """Temporarily sets the declared attributes to ``values`` (e.g. the reduced ones)."""
        saved = {key: getattr(self, key) for key in values}
        for key, value in values.items():
            setattr(self, key, value)
        self._view_depth += 1
        try:
            yield
        finally:
            self._view_depth -= 1
            for key, value in saved.items():
                setattr(self, key, value)

    def _compute_local(self) -> Any:
        """``compute()`` from this rank's state only (no collective)."""
        units = [u for u in self._leaves() if u is not self]
        with state_views(units, None), self._state_view({}):
            return self.compute()

    def __getstate__(self) -> dict:
        return self.__dict__

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
