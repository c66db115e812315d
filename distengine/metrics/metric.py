"""The ``Metric`` base class: state kept as sums and counts, declared for one cross-rank reduction."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import torch

from distengine.metrics import _output
from distengine.metrics.reduction import REDUCTION_OPS, reduce_states

__all__ = ["Metric", "NotComputableError"]


class NotComputableError(RuntimeError):
    """Raised by ``compute()`` when the metric has seen no example yet.

    Example:
        >>> from distengine.metrics import Accuracy
        >>> try:
        ...     Accuracy().compute()
        ... except NotComputableError as e:
        ...     print("not computable")
        not computable
    """


def _reducing(compute: Callable[[Metric], Any]) -> Callable[[Metric], Any]:
    """Wraps a subclass's ``compute`` so that, at world size > 1, it sees the reduced state."""

    @functools.wraps(compute)
    def wrapper(self: Metric) -> Any:
        # Inside a reduced (or deliberately local) view the attributes already hold the
        # values to compute from; nested ``super().compute()`` calls land here too.
        if getattr(self, "_view_depth", 0) > 0 or not self._reductions:
            return compute(self)
        reduced = reduce_states([self])
        if reduced is None:  # world size 1: no collective
            return compute(self)
        with self._state_view(reduced[0]):
            return compute(self)

    wrapper._distengine_reducing = True  # type: ignore[attr-defined]
    return wrapper


class Metric:
    """Base class of all metrics: ``reset``, ``update``, ``compute``, and engine attachment.

    A metric keeps its state as sums, counts, maxima or minima and **declares** it in the
    class attribute ``_reductions`` (attribute name -> ``"sum"``, ``"max"`` or ``"min"``).
    At world size > 1, ``compute()`` first reduces the declared state across ranks (one
    collective), then computes from the reduced values; the local state is left as it was.
    All metrics attached to one engine are reduced together, in one collective per
    completion event. A metric that declares nothing is computed from this rank's state.
    At world size > 1, ``compute()`` is a collective: call it on every rank.

    Subclasses implement ``reset``, ``update`` and ``compute``; ``compute`` reads the declared
    attributes and raises :class:`NotComputableError` when nothing was counted.

    The transformed engine output may be a tuple ``(y_pred, y)`` or a mapping with the keys
    in ``required_output_keys`` (``("y_pred", "y")`` by default). When
    ``engine.state.batch_padding`` is ``k > 0``, the last ``k`` rows of every tensor (and
    list) in it are dropped before ``update``: padded duplicates are never counted.

    Args:
        output_transform: maps ``engine.state.output`` to what ``update`` expects.
        device: where the state is accumulated (CPU by default).
        skip_unrolling: pass ``(list_of_y_pred, list_of_y)`` to ``update`` as it is instead
            of updating once per pair.

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
    # Further attributes that are part of the per-rank state but are not reduced.
    _extra_rank_state: ClassVar[tuple[str, ...]] = ()
    _usages: ClassVar[tuple[str, ...]] = ("epoch_wise", "batch_wise")
    _default_usage: ClassVar[str] = "epoch_wise"
    required_output_keys: ClassVar[tuple[str, ...] | None] = ("y_pred", "y")
    # Keys of ``required_output_keys`` that a mapping output may leave out.
    _optional_output_keys: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
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
        compute = cls.__dict__.get("compute")
        if compute is not None and not getattr(compute, "_distengine_reducing", False):
            cls.compute = _reducing(compute)  # type: ignore[method-assign]

    def __init__(
        self,
        output_transform: Callable[[Any], Any] = lambda x: x,
        device: str | torch.device = "cpu",
        skip_unrolling: bool = False,
    ) -> None:
        if not callable(output_transform):
            raise TypeError(
                f"output_transform must be callable, got {type(output_transform).__name__}"
            )
        if not isinstance(device, (str, torch.device)):
            raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
        self._output_transform = output_transform
        self._device = torch.device(device)
        self._skip_unrolling = bool(skip_unrolling)
        self._view_depth = 0
        self._restored = False
        self.reset()

    # --- the three methods a metric implements -----------------------------------------
    def reset(self) -> None:
        """Sets the state to "nothing seen". Called at the start of each epoch (or batch)."""
        raise NotImplementedError(f"{type(self).__name__} must implement reset()")

    def update(self, output: Any) -> None:
        """Adds one batch's transformed output to the state."""
        raise NotImplementedError(f"{type(self).__name__} must implement update(output)")

    def compute(self) -> Any:
        """Returns the metric's value (reduced over all ranks at world size > 1)."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute()")

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

    @torch.no_grad()
    def iteration_completed(self, engine: Any) -> None:
        """Updates the metric from ``engine.state.output`` (transformed, padding dropped).

        Example:
            >>> metric.iteration_completed(engine)  # doctest: +SKIP
        """
        output = self._output_transform(engine.state.output)
        output = _output.select_required(output, self)
        padding = getattr(engine.state, "batch_padding", 0) or 0
        if padding:
            output = _output.drop_padding(output, padding)
            if output is None:
                return
        if not self._skip_unrolling:
            pairs = _output.unrolled_pairs(output)
            if pairs is not None:
                for pair in pairs:
                    self.update(pair)
                return
        self.update(output)

    def completed(self, engine: Any, name: str) -> None:
        """Computes the metric (a collective at world size > 1) and writes it to ``state.metrics``."""
        _output.write_result(engine, name, self.compute())

    # --- engine attachment ----------------------------------------------------------------
    def attach(self, engine: Any, name: str, usage: str | None = None) -> None:
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
            usage: ``"epoch_wise"`` (default: reset at ``EPOCH_STARTED``, written at
                ``EPOCH_COMPLETED``) or ``"batch_wise"`` (reset at ``ITERATION_STARTED``,
                written at ``ITERATION_COMPLETED``).

        Example:
            >>> Accuracy().attach(evaluator, "accuracy")  # doctest: +SKIP
            >>> evaluator.run(val_loader).metrics["accuracy"]  # doctest: +SKIP
            0.93
        """
        from distengine.metrics.attachment import reducer_of

        if not isinstance(name, str):
            raise TypeError(f"Metric name must be a str, got {type(name).__name__}")
        reducer_of(engine, create=True).add(self, name, self._check_usage(usage))

    def detach(self, engine: Any, usage: str | None = None) -> None:
        """Detaches the metric (all its names for this usage) from ``engine``.

        Example:
            >>> metric.detach(engine)  # doctest: +SKIP
            >>> metric.is_attached(engine)  # doctest: +SKIP
            False
        """
        from distengine.metrics.attachment import reducer_of

        usage = self._check_usage(usage)
        reducer = reducer_of(engine, create=False)
        if reducer is not None:
            reducer.remove(self, usage)

    def is_attached(self, engine: Any, usage: str | None = None) -> bool:
        """Whether the metric is attached to ``engine`` with ``usage``.

        Example:
            >>> metric.is_attached(engine, usage="epoch_wise")  # doctest: +SKIP
            True
        """
        from distengine.metrics.attachment import reducer_of

        usage = self._check_usage(usage)
        reducer = reducer_of(engine, create=False)
        return reducer is not None and reducer.has(self, usage)

    def _check_usage(self, usage: str | None) -> str:
        if usage is None:
            return self._default_usage
        if not isinstance(usage, str) or usage not in self._usages:
            raise ValueError(
                f"usage for {type(self).__name__} must be one of {list(self._usages)}, got {usage!r}"
            )
        return usage

    # --- per-rank state (checkpoints) -----------------------------------------------------
    def _state_names(self) -> tuple[str, ...]:
        return tuple(self._reductions) + tuple(self._extra_rank_state)

    def rank_state_dict(self) -> dict[str, Any]:
        """This rank's (unreduced) state: the declared attributes and the extra ones.

        Example:
            >>> sd = metric.rank_state_dict()  # doctest: +SKIP
            >>> other.load_rank_state_dict(sd)  # doctest: +SKIP
        """
        return {
            key: _output.detached_copy(getattr(self, key), torch.device("cpu"))
            for key in self._state_names()
        }

    def load_rank_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores a state taken by :meth:`rank_state_dict` (e.g. after a mid-epoch resume).

        The next reset at the start of the interrupted epoch is skipped, so the epoch's
        value covers the batches seen before and after the restart.
        """
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
            setattr(self, key, _output.detached_copy(state_dict[key], self._device))
        self._restored = True

    # --- views used by the reducer --------------------------------------------------------
    def _reducible_state(self) -> dict[str, Any]:
        """The declared attributes, as numbers or tensors, to be packed for the collective."""
        return {key: getattr(self, key) for key in self._reductions}

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
        with self._state_view({}):
            return self.compute()
