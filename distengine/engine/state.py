"""The engine's run state: counters, current batch and output, metrics, seed, timings."""

from __future__ import annotations

from typing import Any

from distengine.engine.events import CallableEventWithFilter, Events

__all__ = ["State"]


class State:
    """What an :class:`~distengine.engine.Engine` run is doing now.

    Attributes:
        iteration: iterations completed over the whole run (1-based while running).
        epoch: the current epoch (1-based while running).
        epoch_length: iterations per epoch (``None`` until known for iterators without len).
        max_epochs: epochs to run (``None`` when the run is bounded by ``max_iters``).
        max_iters: iterations to run, if the run is bounded that way.
        batch: the current batch; output: what the process function returned.
        metrics: metric values written by attached metrics.
        dataloader: the data given to ``run``.
        seed: the run's seed (identical on all ranks; decides the data order).
        run_id: the run's identity (16 hex digits, identical on all ranks): drawn when a
            new run starts, saved in ``state_dict`` and kept by every resume of that run.
        times: seconds taken by the last epoch (``"EPOCH_COMPLETED"``) and the run
            (``"COMPLETED"``).
        batch_padding: padded rows at the end of the current batch (metrics skip them).

    Users may add attributes of their own.

    Example:
        >>> s = State(max_epochs=2)
        >>> s.epoch, s.iteration
        (0, 0)
    """

    event_to_attr: dict[Any, str] = {
        Events.GET_BATCH_STARTED: "iteration",
        Events.GET_BATCH_COMPLETED: "iteration",
        Events.ITERATION_STARTED: "iteration",
        Events.ITERATION_COMPLETED: "iteration",
        Events.EPOCH_STARTED: "epoch",
        Events.EPOCH_COMPLETED: "epoch",
        Events.STARTED: "epoch",
        Events.COMPLETED: "epoch",
        Events.DATALOADER_STOP_ITERATION: "iteration",
        Events.TERMINATE: "epoch",
        Events.TERMINATE_SINGLE_EPOCH: "epoch",
        Events.INTERRUPT: "epoch",
        Events.EXCEPTION_RAISED: "epoch",
    }

    def __init__(self, **kwargs: Any):
        self.iteration = 0
        self.epoch = 0
        self.epoch_length: int | None = None
        self.max_epochs: int | None = None
        self.max_iters: int | None = None
        self.output: Any = None
        self.batch: Any = None
        self.metrics: dict[str, Any] = {}
        self.dataloader: Any = None
        self.seed: int | None = None
        self.run_id: str | None = None
        self.times: dict[str, float | None] = {
            Events.EPOCH_COMPLETED.name: None,
            Events.COMPLETED.name: None,
        }
        self.batch_padding = 0
        for k, v in kwargs.items():
            setattr(self, k, v)

    def get_event_attrib_value(self, event_name: CallableEventWithFilter | str) -> int:
        """The counter (``iteration`` or ``epoch``) an event's filters are evaluated on."""
        attr = self.event_to_attr.get(event_name)
        if attr is None:
            raise ValueError(
                f"Event {event_name!r} has no counter: register it with event_to_attr to filter it"
            )
        return getattr(self, attr)

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{k}={v!r}"
            if not hasattr(v, "shape")
            else f"{k}=<{type(v).__name__} {tuple(v.shape)}>"
            for k, v in self.__dict__.items()
            if k not in ("batch", "output", "dataloader")
        )
        return f"State({fields})"
