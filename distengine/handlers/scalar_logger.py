"""Loggers that write rows of scalars (CSV, TensorBoard) and the handlers they use.

A :class:`ScalarLogger` says how to write one row (``_write(values, epoch, iteration,
step)``); its handlers decide what goes in a row: :class:`OutputHandler` (metrics, output,
state attributes), :class:`OptimizerParamsHandler` (a parameter of each group),
:class:`WeightsScalarHandler` and :class:`GradsScalarHandler` (a reduction of each
parameter or gradient). Rows of an evaluator logged with ``global_step_from_engine``
carry the trainer's epoch and iteration.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any

from distengine.engine import Engine
from distengine.handlers._scalars import to_scalars
from distengine.handlers.base_logger import (
    BaseLogger,
    BaseOptimizerParamsHandler,
    BaseOutputHandler,
    BaseWeightsScalarHandler,
    StepFromEngine,
    default_step,
)

__all__ = [
    "GradsScalarHandler",
    "OptimizerParamsHandler",
    "OutputHandler",
    "ScalarLogger",
    "WeightsScalarHandler",
]


def _scalar_logger(logger: Any, handler: Any) -> ScalarLogger:
    if not isinstance(logger, ScalarLogger):
        raise TypeError(
            f"{type(handler).__name__} writes through a distengine ScalarLogger (CSVLogger, "
            f"TensorBoardLogger), got {type(logger).__name__}"
        )
    return logger


class OutputHandler(BaseOutputHandler):
    """Logs metrics, the output and state attributes as ``{tag}/{name}`` scalars.

    See :class:`~distengine.handlers.base_logger.BaseOutputHandler` for the arguments.

    Example:
        >>> from distengine.handlers import CSVLogger, global_step_from_engine
        >>> logger = CSVLogger("log.csv")
        >>> handle = logger.attach(
        ...     evaluator,
        ...     OutputHandler("validation", metric_names="all",
        ...                   global_step_transform=global_step_from_engine(trainer)),
        ...     Events.COMPLETED,
        ... )
    """

    def __call__(self, engine: Engine, logger: Any, event_name: Any) -> None:
        values = self._setup_output_metrics_state_attrs(engine, key_tuple=False)
        _scalar_logger(logger, self).log_scalars(
            engine, event_name, values, self.global_step_transform
        )


class OptimizerParamsHandler(BaseOptimizerParamsHandler):
    """Logs ``param_name`` of each parameter group as ``[{tag}/]{param_name}/group_{i}``.

    Example:
        >>> from distengine.handlers import CSVLogger
        >>> with CSVLogger("log.csv") as logger:
        ...     handle = logger.attach(trainer, OptimizerParamsHandler(optimizer), Events.EPOCH_STARTED)
        ...     state = trainer.run(loader, max_epochs=1)
        >>> print(open("log.csv").read(), end="")
        epoch,iteration,lr/group_0
        1,0,0.1
    """

    def __call__(self, engine: Engine, logger: Any, event_name: Any) -> None:
        prefix = f"{self.tag}/{self.param_name}" if self.tag else self.param_name
        values: dict[str, Any] = {}
        for i, group in enumerate(self.optimizer.param_groups):
            values.update(to_scalars(f"{prefix}/group_{i}", group[self.param_name]))
        _scalar_logger(logger, self).log_scalars(engine, event_name, values, None)


class WeightsScalarHandler(BaseWeightsScalarHandler):
    """Logs ``reduction(parameter)`` as ``[{tag}/]weights_{reduction}/{name}``.

    Example:
        >>> from distengine.handlers import CSVLogger
        >>> with CSVLogger("log.csv") as logger:
        ...     handle = logger.attach(trainer, WeightsScalarHandler(model), Events.EPOCH_COMPLETED)
        ...     state = trainer.run(loader, max_epochs=1)
        >>> print(open("log.csv").readline(), end="")
        epoch,iteration,weights_norm/weight,weights_norm/bias
    """

    _kind = "weights"

    def _tensor(self, p: Any) -> Any:
        return p.data

    def __call__(self, engine: Engine, logger: Any, event_name: Any) -> None:
        prefix = f"{self.tag}/" if self.tag else ""
        reduction = getattr(self.reduction, "__name__", "reduction")
        values: dict[str, Any] = {}
        for name, p in self.weights:
            tensor = self._tensor(p)
            if tensor is None:
                continue
            key = f"{prefix}{self._kind}_{reduction}/{name.replace('.', '/')}"
            values.update(to_scalars(key, self.reduction(tensor)))
        _scalar_logger(logger, self).log_scalars(engine, event_name, values, None)


class GradsScalarHandler(WeightsScalarHandler):
    """Logs ``reduction(parameter.grad)`` as ``[{tag}/]grads_{reduction}/{name}`` (skips parameters without a gradient).

    Example:
        >>> from distengine.handlers import CSVLogger
        >>> with CSVLogger("log.csv") as logger:
        ...     handle = logger.attach(trainer, GradsScalarHandler(model), Events.ITERATION_COMPLETED(every=2))
        ...     state = trainer.run(loader, max_epochs=1)
        >>> print(open("log.csv").readline(), end="")
        epoch,iteration,grads_norm/weight,grads_norm/bias
    """

    _kind = "grads"

    def _tensor(self, p: Any) -> Any:
        return p.grad


class ScalarLogger(BaseLogger):
    """A logger that writes rows of scalars from the main process; subclasses say how.

    Subclasses implement ``_write(values, epoch, iteration, step)`` (one row) and
    ``_close()``.
    """

    def _create_output_handler(self, *args: Any, **kwargs: Any) -> OutputHandler:
        tag = kwargs.get("tag", args[0] if args else None)
        if not isinstance(tag, str):
            raise TypeError(f"tag should be a str, got {type(tag).__name__}")
        return OutputHandler(*args, **kwargs)

    def _create_opt_params_handler(self, *args: Any, **kwargs: Any) -> OptimizerParamsHandler:
        return OptimizerParamsHandler(*args, **kwargs)

    @abstractmethod
    def _write(self, values: dict[str, float | int], epoch: int, iteration: int, step: int) -> None:
        """Writes one event's values, labelled with epoch, iteration and step."""

    @abstractmethod
    def _close(self) -> None:
        """Flush and release the output, if it was opened."""

    def log_scalars(
        self,
        engine: Engine,
        event_name: Any,
        values: dict[str, Any],
        global_step_transform: Callable[[Engine, Any], int] | None = None,
    ) -> None:
        """Writes one row of ``values`` for ``event_name`` of ``engine`` (the handlers call it).

        The row is labelled with the epoch and iteration of ``engine`` (of the engine of
        :func:`~distengine.handlers.global_step_from_engine`, when that is the transform) and
        with the step that ``global_step_transform`` returns (default: the counter of the
        event, iteration or epoch).

        Example:
            >>> logger.log_scalars(trainer, Events.EPOCH_COMPLETED, {"loss": 0.25})  # doctest: +SKIP
        """
        if not values:
            return
        labels = (
            global_step_transform.engine
            if isinstance(global_step_transform, StepFromEngine)
            else engine
        )
        if global_step_transform is not None:
            step = int(global_step_transform(engine, event_name))
        else:
            step = default_step(engine, event_name)
        self._write(values, labels.state.epoch, labels.state.iteration, step)

    def close(self) -> None:
        """Flushes and closes the output (no-op on ranks that write nothing)."""
        self._close()
