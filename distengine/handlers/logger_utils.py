"""One-call logging set-up: a trainer's metrics, learning rates and evaluators' metrics.

:func:`setup_tb_logging` builds a :class:`~distengine.handlers.TensorBoardLogger` and
attaches the three usual handlers; :func:`setup_logging` does the same for any
:class:`~distengine.handlers.base_logger.BaseLogger` (e.g. a ``CSVLogger``). Loggers write
from the main process only, so these may be called on every rank (or, as Ignite's examples
do, on rank 0 alone: they make no collective).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from distengine.engine import Engine, Events
from distengine.handlers.base_logger import BaseLogger, global_step_from_engine
from distengine.handlers.tensorboard_logger import TensorBoardLogger

__all__ = ["setup_logging", "setup_tb_logging"]

MetricNames = str | list[str]


def _check_metric_names(value: Any, argument: str) -> None:
    if value == "all":
        return
    if isinstance(value, list | tuple) and all(isinstance(n, str) for n in value):
        return
    raise TypeError(f"{argument} should be 'all' or a list of metric names, got {value!r}")


def setup_logging(
    logger: BaseLogger,
    trainer: Engine,
    optimizers: torch.optim.Optimizer | Mapping[str | None, torch.optim.Optimizer] | None = None,
    evaluators: Engine | Mapping[str, Engine] | None = None,
    log_every_iters: int | None = 100,
    *,
    trainer_metric_names: MetricNames = "all",
    evaluator_metric_names: MetricNames = "all",
) -> BaseLogger:
    """Attaches the usual handlers of a training job to ``logger`` and returns it.

    - the trainer's metrics (``trainer_metric_names``) under the tag ``"training"``, every
      ``log_every_iters`` completed iterations;
    - the learning rate of each optimizer's parameter groups, every ``log_every_iters``
      started iterations (a dict's keys are the tags);
    - each evaluator's metrics (``evaluator_metric_names``) when it completes, under its
      key (``"validation"`` for a single evaluator), labelled with the trainer's epoch
      (``global_step_from_engine(trainer)``).

    Args:
        logger: the logger to attach to (e.g. ``TensorBoardLogger``, ``CSVLogger``).
        trainer: the training engine.
        optimizers: an optimizer, or ``{tag: optimizer}``.
        evaluators: an engine, or ``{tag: engine}``.
        log_every_iters: iteration interval of the trainer's handlers; ``None`` or 1:
            every iteration.
        trainer_metric_names: trainer metrics to log, or ``"all"``.
        evaluator_metric_names: evaluator metrics to log, or ``"all"``.

    Returns:
        ``logger``.

    Raises:
        TypeError: ``optimizers`` or ``evaluators`` of another type, or metric names
            that are neither ``"all"`` nor a list of names.
        ValueError: ``log_every_iters`` not a positive int.

    Example:
        >>> from distengine.handlers import CSVLogger
        >>> from distengine.metrics import Accuracy
        >>> Accuracy().attach(evaluator, "accuracy")
        >>> @trainer.on(Events.EPOCH_COMPLETED)
        ... def validate():
        ...     evaluator.run(loader)
        >>> csv = setup_logging(CSVLogger("runs/exp1/metrics.csv"), trainer, optimizer,
        ...                     {"test": evaluator}, log_every_iters=2)
        >>> state = trainer.run(loader, max_epochs=2)
        >>> csv.close()
        >>> print(open("runs/exp1/metrics.csv").readline(), end="")
        epoch,iteration,lr/group_0,test/accuracy
    """
    if not isinstance(logger, BaseLogger):
        raise TypeError(f"logger should be a BaseLogger, got {type(logger).__name__}")
    if not isinstance(trainer, Engine):
        raise TypeError(f"trainer should be an Engine, got {type(trainer).__name__}")
    if optimizers is not None and not isinstance(optimizers, torch.optim.Optimizer | Mapping):
        raise TypeError(
            "Argument optimizers should be an optimizer or a dict of optimizers, "
            f"got {type(optimizers).__name__}"
        )
    if evaluators is not None and not isinstance(evaluators, Engine | Mapping):
        raise TypeError(
            "Argument evaluators should be an Engine or a dict of engines, "
            f"got {type(evaluators).__name__}"
        )
    if log_every_iters is None:
        log_every_iters = 1
    if isinstance(log_every_iters, bool) or not isinstance(log_every_iters, int):
        raise ValueError(
            f"log_every_iters should be a positive int or None, got {log_every_iters!r}"
        )
    if log_every_iters < 1:
        raise ValueError(f"log_every_iters should be a positive int or None, got {log_every_iters}")
    _check_metric_names(trainer_metric_names, "trainer_metric_names")
    _check_metric_names(evaluator_metric_names, "evaluator_metric_names")

    logger.attach_output_handler(
        trainer,
        Events.ITERATION_COMPLETED(every=log_every_iters),
        tag="training",
        metric_names=trainer_metric_names,
    )
    if optimizers is not None:
        named = {None: optimizers} if isinstance(optimizers, torch.optim.Optimizer) else optimizers
        for tag, optimizer in named.items():
            logger.attach_opt_params_handler(
                trainer,
                Events.ITERATION_STARTED(every=log_every_iters),
                optimizer,
                param_name="lr",
                tag=tag,
            )
    if evaluators is not None:
        named_engines = {"validation": evaluators} if isinstance(evaluators, Engine) else evaluators
        step = global_step_from_engine(trainer)
        for tag, evaluator in named_engines.items():
            if not isinstance(evaluator, Engine):
                raise TypeError(
                    f"evaluators[{tag!r}] should be an Engine, got {type(evaluator).__name__}"
                )
            logger.attach_output_handler(
                evaluator,
                Events.COMPLETED,
                tag=tag,
                metric_names=evaluator_metric_names,
                global_step_transform=step,
            )
    return logger


def setup_tb_logging(
    output_path: str | os.PathLike,
    trainer: Engine,
    optimizers: torch.optim.Optimizer | Mapping[str | None, torch.optim.Optimizer] | None = None,
    evaluators: Engine | Mapping[str, Engine] | None = None,
    log_every_iters: int | None = 100,
    *,
    trainer_metric_names: MetricNames = "all",
    evaluator_metric_names: MetricNames = "all",
    **kwargs: Any,
) -> TensorBoardLogger:
    """Creates a :class:`TensorBoardLogger` writing to ``output_path`` with the usual handlers.

    See :func:`setup_logging` for what is logged and when. Only the main process writes
    event files; call ``close()`` on the returned logger at the end.

    Args:
        output_path: folder of the event files.
        trainer: the training engine.
        optimizers: an optimizer, or ``{tag: optimizer}``.
        evaluators: an engine, or ``{tag: engine}``.
        log_every_iters: iteration interval of the trainer's handlers (``None``: 1).
        trainer_metric_names: trainer metrics to log, or ``"all"``.
        evaluator_metric_names: evaluator metrics to log, or ``"all"``.
        **kwargs: passed to ``SummaryWriter`` (e.g. ``flush_secs``).

    Returns:
        The attached :class:`TensorBoardLogger`.

    Example:
        >>> tb_logger = setup_tb_logging("runs/exp1", trainer, optimizer,
        ...                              evaluators={"test": evaluator})
        >>> state = trainer.run(loader, max_epochs=2)
        >>> tb_logger.close()
    """
    logger = TensorBoardLogger(output_path, **kwargs)
    setup_logging(
        logger,
        trainer,
        optimizers,
        evaluators,
        log_every_iters,
        trainer_metric_names=trainer_metric_names,
        evaluator_metric_names=evaluator_metric_names,
    )
    return logger
