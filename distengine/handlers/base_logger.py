"""The attach API shared by CSVLogger and TensorBoardLogger.

A logger subclass only says how to write one row of scalars; this module decides when,
what (outputs, metrics, optimizer parameters), under which names, with which
epoch/iteration labels, and on which rank (the main process only).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import distengine.distributed as idist
from distengine.engine import Engine
from distengine.handlers._scalars import check_metric_names, collect, event_counter, to_scalars


class _StepFromEngine:
    """Callable ``(engine, event_name) -> step`` that reads another engine's counters."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __call__(self, engine: Engine, event_name: Any) -> int:
        return getattr(self.engine.state, event_counter(event_name))


def global_step_from_engine(engine: Engine) -> Callable[[Engine, Any], int]:
    """Label logged values with another engine's counters (usually the trainer's).

    Pass the result as ``global_step_transform`` when logging an evaluator: the step is
    the trainer's iteration for iteration events and its epoch otherwise, and CSV rows
    carry the trainer's epoch and iteration.

    Args:
        engine: the engine whose ``state`` gives the step.

    Returns:
        A ``(engine, event_name) -> int`` callable.

    Example:
        >>> logger.attach_output_handler(evaluator, Events.COMPLETED, tag="validation",
        ...                              metric_names="all",
        ...                              global_step_transform=global_step_from_engine(trainer))
    """
    if not isinstance(engine, Engine):
        raise TypeError(f"engine should be an Engine, got {type(engine).__name__}")
    return _StepFromEngine(engine)


class BaseLogger(ABC):
    """Logs engine outputs, metrics and optimizer parameters from the main process.

    Handlers are registered on the main process only (``idist.is_main_process()``); on
    other ranks the ``attach_*`` methods register nothing and return None, so nothing is
    computed, opened or written there, and no collective is ever made. Subclasses
    implement ``_write(values, epoch, iteration, step)`` and ``_close()``.

    Example:
        >>> class PrintLogger(BaseLogger):
        ...     def _write(self, values, epoch, iteration, step):
        ...         print(epoch, iteration, values)
        ...     def _close(self):
        ...         pass
        >>> PrintLogger().attach_output_handler(trainer, Events.EPOCH_COMPLETED, tag="train",
        ...                                     metric_names="all")
    """

    @abstractmethod
    def _write(self, values: dict[str, float | int], epoch: int, iteration: int, step: int) -> None:
        """Write one event's values, labelled with epoch, iteration and step."""

    @abstractmethod
    def _close(self) -> None:
        """Flush and release the output, if it was opened."""

    def attach_output_handler(
        self,
        engine: Engine,
        event_name: Any,
        tag: str,
        metric_names: str | list[str] | None = None,
        output_transform: Callable[[Any], Any] | None = None,
        global_step_transform: Callable[[Engine, Any], int] | None = None,
    ) -> Any:
        """Log metrics and/or the output of ``engine`` at ``event_name`` as ``{tag}/{name}``.

        Args:
            engine: the engine to read.
            event_name: when to log (filters allowed, e.g. ``ITERATION_COMPLETED(every=50)``).
            tag: prefix of the names (``"training"``, ``"validation"``).
            metric_names: names in ``engine.state.metrics``, or ``"all"``.
            output_transform: maps ``engine.state.output`` to a number (logged as
                ``{tag}/output``) or a ``{name: value}`` dict of numbers or 0-d/1-d tensors.
            global_step_transform: ``(engine, event_name) -> step``; use
                ``global_step_from_engine(trainer)`` for an evaluator. Default: ``engine``'s
                iteration for iteration events, its epoch otherwise.

        Returns:
            The handle from ``add_event_handler`` on the main process, None elsewhere.

        Raises:
            ValueError: if both ``metric_names`` and ``output_transform`` are None.

        Example:
            >>> logger.attach_output_handler(trainer, Events.ITERATION_COMPLETED(every=10),
            ...                              tag="training", output_transform=lambda l: {"loss": l})
        """
        metric_names = check_metric_names(metric_names)
        if metric_names is None and output_transform is None:
            raise ValueError("expected metric_names or output_transform, got neither")
        if not isinstance(tag, str):
            raise TypeError(f"tag should be a str, got {type(tag).__name__}")
        self._check_callable("output_transform", output_transform)
        self._check_callable("global_step_transform", global_step_transform)
        if not idist.is_main_process():
            return None

        def log_output(engine: Engine) -> None:
            values = collect(engine, metric_names, output_transform)
            named = {f"{tag}/{name}" if tag else name: v for name, v in values.items()}
            self._log(engine, event_name, named, global_step_transform)

        return engine.add_event_handler(event_name, log_output)

    def attach_opt_params_handler(
        self,
        engine: Engine,
        event_name: Any,
        optimizer: Any,
        param_name: str = "lr",
        tag: str | None = None,
        global_step_transform: Callable[[Engine, Any], int] | None = None,
    ) -> Any:
        """Log ``param_name`` of each optimizer parameter group as ``[{tag}/]{param_name}/group_{i}``.

        Args:
            engine: the engine whose event triggers logging.
            event_name: when to log.
            optimizer: a ``torch.optim.Optimizer`` or anything with ``param_groups``.
            param_name: the group key to log (``"lr"``, ``"weight_decay"``, ...).
            tag: optional prefix.
            global_step_transform: see ``attach_output_handler``.

        Returns:
            The handle from ``add_event_handler`` on the main process, None elsewhere.

        Example:
            >>> logger.attach_opt_params_handler(trainer, Events.EPOCH_STARTED, optimizer)
        """
        if not isinstance(getattr(optimizer, "param_groups", None), list | tuple):
            raise TypeError(
                f"optimizer should have a list of param_groups, got {type(optimizer).__name__}"
            )
        self._check_callable("global_step_transform", global_step_transform)
        if not idist.is_main_process():
            return None
        prefix = f"{tag}/{param_name}" if tag else param_name

        def log_params(engine: Engine) -> None:
            values: dict[str, Any] = {}
            for i, group in enumerate(optimizer.param_groups):
                values.update(to_scalars(f"{prefix}/group_{i}", group[param_name]))
            self._log(engine, event_name, values, global_step_transform)

        return engine.add_event_handler(event_name, log_params)

    def _log(
        self,
        engine: Engine,
        event_name: Any,
        values: dict[str, Any],
        global_step_transform: Callable[[Engine, Any], int] | None,
    ) -> None:
        if not values:
            return
        labels = (
            global_step_transform.engine
            if isinstance(global_step_transform, _StepFromEngine)
            else engine
        )
        if global_step_transform is not None:
            step = int(global_step_transform(engine, event_name))
        else:
            step = getattr(engine.state, event_counter(event_name))
        self._write(values, labels.state.epoch, labels.state.iteration, step)

    @staticmethod
    def _check_callable(name: str, fn: Any) -> None:
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} should be callable or None, got {type(fn).__name__}")

    def close(self) -> None:
        """Flush and close the output (no-op on ranks that write nothing)."""
        self._close()

    def __enter__(self) -> BaseLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
