"""BatchSizeScheduler: a DataLoader's batch size set per event (plain DataLoaders only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import BatchSampler, DataLoader

from distengine.engine import Engine, Events

from .base import BaseParamScheduler, record_history

__all__ = ["BatchSizeScheduler"]


class BatchSizeScheduler(BaseParamScheduler):
    """Sets ``dataloader.batch_sampler.batch_size`` to ``scheduler_fn(event_index)`` on each event.

    For a plain ``DataLoader`` with a ``BatchSampler``. A loader from
    ``idist.auto_dataloader`` is refused: its global batch size is what its resume
    cursor counts in, so changing it would break exact resume. Attach it to
    ``EPOCH_STARTED`` (the default of :meth:`attach`); the new size applies from the
    next iterator of the loader.

    Args:
        dataloader: the DataLoader whose batch size changes.
        scheduler_fn: ``event_index -> batch size`` (a positive int).
        save_history: append values to ``engine.state.param_history["batch_size"]``.

    Raises:
        TypeError: not a DataLoader, or ``scheduler_fn`` not callable.
        ValueError: the loader has no ``BatchSampler``, or it comes from ``auto_dataloader``.

    Example:
        >>> scheduler = BatchSizeScheduler(loader, scheduler_fn=lambda e: 4 * (e + 1))
        >>> scheduler.attach(trainer)
        >>> @trainer.on(Events.EPOCH_COMPLETED)
        ... def show(engine):
        ...     print(engine.state.epoch, engine.state.batch[0].shape[0])
        >>> state = trainer.run(loader, max_epochs=2)
        1 4
        2 8
    """

    def __init__(
        self,
        dataloader: DataLoader,
        scheduler_fn: Callable[[int], int],
        save_history: bool = False,
    ) -> None:
        super().__init__(param_name="batch_size", save_history=save_history)
        if not isinstance(dataloader, DataLoader):
            raise TypeError(
                "Argument dataloader should be torch.utils.data.DataLoader, but given "
                f"{type(dataloader).__name__}"
            )
        if not isinstance(getattr(dataloader, "batch_sampler", None), BatchSampler):
            raise ValueError(
                "Argument dataloader should have a BatchSampler "
                "(dataloader.batch_sampler should be a torch.utils.data.BatchSampler)"
            )
        if hasattr(dataloader.sampler, "global_batch_size"):
            raise ValueError(
                "BatchSizeScheduler cannot change the batch size of a loader from "
                "idist.auto_dataloader: its resume cursor counts global batches of a fixed size"
            )
        if not callable(scheduler_fn):
            raise TypeError(
                f"Argument scheduler_fn should be callable, but given {type(scheduler_fn).__name__}"
            )
        self.dataloader = dataloader
        self.scheduler_fn = scheduler_fn

    def __call__(self, engine: Engine | None) -> None:
        value = self.get_param()
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"Batch size returned by scheduler_fn should be a positive integer, but given {value!r}"
            )
        self.dataloader.batch_sampler.batch_size = value  # type: ignore[union-attr]
        if self.save_history:
            record_history(engine, self.param_name, value)
        self.event_index += 1

    def get_param(self) -> int:
        """Returns ``scheduler_fn(event_index)``."""
        return self.scheduler_fn(self.event_index)

    def attach(self, engine: Engine, event: Any = Events.EPOCH_STARTED) -> None:
        """Calls the scheduler on ``event`` of ``engine`` (default ``EPOCH_STARTED``)."""
        engine.add_event_handler(event, self)

    @classmethod
    def simulate_values(cls, num_events: int, **scheduler_kwargs: Any) -> list[list[Any]]:
        """Returns ``[[i, scheduler_fn(i)], ...]``.

        Raises:
            ValueError: no ``scheduler_fn`` given.
        """
        if "scheduler_fn" not in scheduler_kwargs:
            raise ValueError("Argument scheduler_kwargs must contain 'scheduler_fn'")
        fn = scheduler_kwargs["scheduler_fn"]
        return [[i, fn(i)] for i in range(num_events)]
