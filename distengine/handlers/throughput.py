"""ThroughputLogger: samples per second of the whole job, once per epoch."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

import distengine.distributed as idist
from distengine.engine import Engine, Events

_log = logging.getLogger(__name__)


def _leading_dim(batch: Any) -> int | None:
    """Returns the first dimension of the first tensor found in ``batch``, if any."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.ndim > 0 else 1
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        for item in batch:
            size = _leading_dim(item)
            if size is not None:
                return size
    return None


class ThroughputLogger:
    """Samples per second across all ranks, computed at the end of every epoch.

    Each rank counts the samples it handed to the process function this epoch (padding
    rows, ``engine.state.batch_padding``, are not samples) and the time from the start of
    the epoch to its last ``ITERATION_COMPLETED`` (so epoch-end work such as evaluation is
    not counted). At ``EPOCH_COMPLETED`` one ``idist.all_reduce`` sums
    ``[samples, seconds]`` over the ranks -- the only collective this handler makes, one
    per epoch, on every rank since all ranks fire the same events. Throughput is the job's
    samples divided by the mean per-rank time. The result is stored in
    ``engine.state.metrics[name]`` (identical on every rank, so loggers and the progress
    bar can show it) and in ``self.value``, and logged on the main process through the
    ``distengine.handlers.throughput`` logger.

    Args:
        batch_size_fn: maps ``engine.state.batch`` to the number of samples in it on this
            rank; defaults to the first dimension of the first tensor in the batch.
        name: key in ``engine.state.metrics``.
        clock: returns the current time in seconds (``time.perf_counter`` by default).

    Example:
        >>> from distengine.handlers import CSVLogger
        >>> throughput = ThroughputLogger().attach(trainer)
        >>> with CSVLogger("log.csv") as csv_logger:
        ...     handle = csv_logger.attach_output_handler(
        ...         trainer, Events.EPOCH_COMPLETED, tag="train", metric_names=["samples_per_sec"])
        ...     state = trainer.run(loader, max_epochs=2)
        >>> trainer.state.metrics["samples_per_sec"] > 0  # job-wide, same on every rank
        True
    """

    def __init__(
        self,
        batch_size_fn: Callable[[Any], int] | None = None,
        name: str = "samples_per_sec",
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if batch_size_fn is not None and not callable(batch_size_fn):
            raise TypeError(f"batch_size_fn should be callable or None, got {batch_size_fn!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name should be a non-empty str, got {name!r}")
        self.batch_size_fn = batch_size_fn
        self.name = name
        self._clock = clock
        self.value: float | None = None
        self._reset()

    def attach(self, engine: Engine) -> ThroughputLogger:
        """Counts on ``engine``'s iterations and reports at each of its epoch ends.

        Attach it before any handler that reads ``engine.state.metrics[name]`` at
        ``EPOCH_COMPLETED``, since handlers run in the order they were added.

        Returns:
            This handler.
        """
        # STARTED covers a run resumed mid-epoch, should it not fire EPOCH_STARTED first.
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._count)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._report)
        return self

    def _reset(self, *args: Any) -> None:
        self._start = self._clock()
        self._last = self._start
        self._samples = 0

    def _count(self, engine: Engine) -> None:
        batch = engine.state.batch
        if self.batch_size_fn is not None:
            size = self.batch_size_fn(batch)
        else:
            size = _leading_dim(batch)
            if size is None:
                raise TypeError(
                    "ThroughputLogger could not find a tensor in engine.state.batch to count "
                    f"samples (got {type(batch).__name__}); pass batch_size_fn"
                )
        self._samples += int(size) - int(getattr(engine.state, "batch_padding", 0) or 0)
        self._last = self._clock()

    def _report(self, engine: Engine) -> None:
        # A CPU tensor: idist.all_reduce moves it to the backend's device (CUDA under NCCL).
        local = torch.tensor([float(self._samples), self._last - self._start], dtype=torch.float64)
        total = idist.all_reduce(local)
        samples, seconds = float(total[0]), float(total[1]) / idist.get_world_size()
        self.value = samples / seconds if seconds > 0 else float("nan")
        engine.state.metrics[self.name] = self.value
        if idist.is_main_process():
            _log.info(
                "epoch %d: %.0f samples in %.3f s, %.1f samples/s",
                engine.state.epoch,
                samples,
                seconds,
                self.value,
            )
