"""TensorBoardLogger: scalars to TensorBoard event files, from the main process only."""

from __future__ import annotations

import os
from typing import Any

from distengine.handlers.scalar_logger import (
    GradsScalarHandler,
    OptimizerParamsHandler,
    OutputHandler,
    ScalarLogger,
    WeightsScalarHandler,
)

__all__ = [
    "GradsScalarHandler",
    "OptimizerParamsHandler",
    "OutputHandler",
    "TensorBoardLogger",
    "TensorboardLogger",
    "WeightsScalarHandler",
]


def _summary_writer_class() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError(
            "TensorBoardLogger needs the tensorboard package, which is not installed: "
            "pip install 'distengine[tensorboard]' (or pip install tensorboard)"
        ) from exc
    return SummaryWriter


class TensorBoardLogger(ScalarLogger):
    """Writes logged values as TensorBoard scalars (``add_scalar(name, value, step)``).

    Uses ``torch.utils.tensorboard.SummaryWriter`` (needs the optional ``tensorboard``
    package: ``pip install 'distengine[tensorboard]'``). Only the main process creates the
    writer, on the first logged value; other ranks create no files. Call ``close()`` (or
    use it as a context manager) to flush the event file.

    Args:
        log_dir: folder of the event files (a ``str`` or a path object).
        **writer_kwargs: passed to ``SummaryWriter`` (e.g. ``flush_secs``, ``filename_suffix``).

    Raises:
        ImportError: if tensorboard is not installed (on every rank, at construction).

    Example:
        >>> from distengine.handlers.base_logger import global_step_from_engine
        >>> @trainer.on(Events.EPOCH_COMPLETED)
        ... def validate():
        ...     evaluator.run(loader)
        >>> with TensorBoardLogger("runs/exp1") as tb_logger:
        ...     _ = tb_logger.attach_output_handler(
        ...         trainer, Events.ITERATION_COMPLETED(every=2), tag="training",
        ...         output_transform=lambda loss: {"loss": loss})
        ...     _ = tb_logger.attach_output_handler(
        ...         evaluator, Events.COMPLETED, tag="validation", metric_names="all",
        ...         global_step_transform=global_step_from_engine(trainer))
        ...     _ = tb_logger.attach_opt_params_handler(trainer, Events.ITERATION_STARTED, optimizer)
        ...     state = trainer.run(loader, max_epochs=2)
        >>> import os
        >>> [name.startswith("events.out.tfevents") for name in os.listdir("runs/exp1")]
        [True]
    """

    def __init__(self, log_dir: str | os.PathLike, **writer_kwargs: Any) -> None:
        if not isinstance(log_dir, str | os.PathLike) or not os.fspath(log_dir):
            raise TypeError(f"log_dir should be a non-empty str or path, got {log_dir!r}")
        self._writer_class = _summary_writer_class()
        self.log_dir = os.fspath(log_dir)
        self._writer_kwargs = writer_kwargs
        self.writer: Any = None

    def _write(self, values: dict[str, float | int], epoch: int, iteration: int, step: int) -> None:
        if self.writer is None:
            self.writer = self._writer_class(log_dir=self.log_dir, **self._writer_kwargs)
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


TensorboardLogger = TensorBoardLogger
"""Ignite's spelling of :class:`TensorBoardLogger`."""
