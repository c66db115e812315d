"""The engine's run state: counters, current batch and output, metrics, seed, timings."""

from __future__ import annotations

import numbers
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
        batch_padding: padded rows at the end of the current batch (0, or 1 when this
            rank's whole batch is a padding row; metrics and ``create_supervised_trainer``
            skip them).
        batch_loss_scale: the weight of this rank's mean loss over its real rows: with it,
            DDP's average of the ranks' gradients is the gradient of the mean over the
            global batch (1.0 unless ranks hold unequal shares of the batch; 0.0 for padding).
        preempted: ``True`` once the run stopped for a preemption signal.

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
        self.batch_loss_scale = 1.0
        self.preempted = False
        for k, v in kwargs.items():
            setattr(self, k, v)

    def get_event_attrib_value(self, event_name: CallableEventWithFilter | str) -> int:
        """Returns the counter (``iteration`` or ``epoch``) an event's filters are evaluated on."""
        attr = self.event_to_attr.get(event_name)
        if attr is None:
            raise RuntimeError(
                f"Unknown event name {event_name!r}: it has no counter (register it with "
                "event_to_attr to filter it)"
            )
        return getattr(self, attr)

    def __repr__(self) -> str:
        # Ignite's form: one attribute per line, numbers and strings shown, other values by type
        lines = ["State:"]
        for attr, value in self.__dict__.items():
            if not isinstance(value, (numbers.Number, str)):
                value = type(value)
            lines.append(f"\t{attr}: {value}")
        return "\n".join(lines) + "\n"
