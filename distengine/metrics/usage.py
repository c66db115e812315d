"""Metric usages: on which engine events a metric is reset, updated and written.

The classes and their ``usage_name`` strings are Ignite's; ``Metric.attach(engine, name,
usage=...)`` accepts either. Reset / update / write events:

- ``EpochWise`` (``"epoch_wise"``, the default): ``EPOCH_STARTED`` / every
  ``ITERATION_COMPLETED`` / ``EPOCH_COMPLETED``;
- ``BatchWise`` (``"batch_wise"``): ``ITERATION_STARTED`` / ``ITERATION_COMPLETED`` /
  ``ITERATION_COMPLETED``;
- ``BatchFiltered(every=...)``: ``EPOCH_STARTED`` / the filtered ``ITERATION_COMPLETED`` /
  ``EPOCH_COMPLETED``;
- ``RunningBatchWise`` (``"running_batch_wise"``): ``STARTED`` / ``ITERATION_COMPLETED`` /
  ``ITERATION_COMPLETED``;
- ``SingleEpochRunningBatchWise`` (``"single_epoch_running_batch_wise"``): ``EPOCH_STARTED``
  / ``ITERATION_COMPLETED`` / ``ITERATION_COMPLETED``;
- ``RunningEpochWise`` (``"running_epoch_wise"``): ``STARTED`` / ``EPOCH_COMPLETED`` /
  ``EPOCH_COMPLETED``.

Example:
    >>> from distengine.metrics import Accuracy, BatchWise
    >>> Accuracy().attach(evaluator, "acc", usage=BatchWise())
    >>> Accuracy().attach(evaluator, "acc_too", usage="batch_wise")  # the same, by name
    >>> evaluator.run(loader).metrics["acc"]  # the last batch's accuracy
    0.5
"""

from __future__ import annotations

from typing import Any

from distengine.engine import Events

__all__ = [
    "MetricUsage",
    "EpochWise",
    "BatchWise",
    "BatchFiltered",
    "RunningEpochWise",
    "RunningBatchWise",
    "SingleEpochRunningBatchWise",
    "as_usage",
]


class MetricUsage:
    """A usage: the events at which a metric starts, updates and completes.

    Args:
        started: event at which the metric is reset.
        completed: event at which its value is computed and written to ``state.metrics``.
        iteration_completed: event (possibly filtered) at which it is updated.

    Example:
        >>> u = EpochWise()
        >>> (u.STARTED, u.ITERATION_COMPLETED, u.COMPLETED) == (
        ...     Events.EPOCH_STARTED, Events.ITERATION_COMPLETED, Events.EPOCH_COMPLETED)
        True
    """

    usage_name: str = "custom"

    def __init__(self, started: Any, completed: Any, iteration_completed: Any) -> None:
        for label, event in (
            ("started", started),
            ("completed", completed),
            ("iteration_completed", iteration_completed),
        ):
            if not hasattr(event, "value"):
                raise TypeError(f"MetricUsage {label} must be an event, got {type(event).__name__}")
        self.__started = started
        self.__completed = completed
        self.__iteration_completed = iteration_completed

    @property
    def STARTED(self) -> Any:  # noqa: N802 - Ignite's name
        """The event that resets the metric."""
        return self.__started

    @property
    def COMPLETED(self) -> Any:  # noqa: N802 - Ignite's name
        """The event at which the metric is computed and written."""
        return self.__completed

    @property
    def ITERATION_COMPLETED(self) -> Any:  # noqa: N802 - Ignite's name
        """The event (possibly filtered) at which the metric is updated."""
        return self.__iteration_completed

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EpochWise(MetricUsage):
    """Reset at ``EPOCH_STARTED``, updated every iteration, written at ``EPOCH_COMPLETED`` (default)."""

    usage_name: str = "epoch_wise"

    def __init__(self) -> None:
        super().__init__(Events.EPOCH_STARTED, Events.EPOCH_COMPLETED, Events.ITERATION_COMPLETED)


class RunningEpochWise(EpochWise):
    """Reset at ``STARTED``, updated and written at ``EPOCH_COMPLETED`` (running value over epochs)."""

    usage_name: str = "running_epoch_wise"

    def __init__(self) -> None:
        MetricUsage.__init__(self, Events.STARTED, Events.EPOCH_COMPLETED, Events.EPOCH_COMPLETED)


class BatchWise(MetricUsage):
    """Reset at ``ITERATION_STARTED``, updated and written at ``ITERATION_COMPLETED``."""

    usage_name: str = "batch_wise"

    def __init__(self) -> None:
        super().__init__(
            Events.ITERATION_STARTED, Events.ITERATION_COMPLETED, Events.ITERATION_COMPLETED
        )


class RunningBatchWise(BatchWise):
    """Reset at ``STARTED``, updated and written every iteration (running value over the run)."""

    usage_name: str = "running_batch_wise"

    def __init__(self) -> None:
        MetricUsage.__init__(
            self, Events.STARTED, Events.ITERATION_COMPLETED, Events.ITERATION_COMPLETED
        )


class SingleEpochRunningBatchWise(BatchWise):
    """Reset at ``EPOCH_STARTED``, updated and written every iteration (running value in an epoch)."""

    usage_name: str = "single_epoch_running_batch_wise"

    def __init__(self) -> None:
        MetricUsage.__init__(
            self, Events.EPOCH_STARTED, Events.ITERATION_COMPLETED, Events.ITERATION_COMPLETED
        )


class BatchFiltered(MetricUsage):
    """Like :class:`EpochWise`, but updated only on the iterations a filter selects.

    Takes the arguments of ``Events.ITERATION_COMPLETED(...)`` (``every=``, ``once=``,
    ``before=``/``after=``, ``event_filter=``). The filter sees the engine's iteration
    counter, which is the same on every rank, so all ranks update on the same iterations.

    Example:
        >>> from distengine.metrics import Accuracy
        >>> usage = BatchFiltered(every=2)
        >>> Accuracy().attach(evaluator, "acc", usage=usage)  # batches 2 and 4 of each epoch
        >>> evaluator.run(loader).metrics["acc"]
        0.25
    """

    usage_name: str = "batch_filtered"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(
            Events.EPOCH_STARTED,
            Events.EPOCH_COMPLETED,
            Events.ITERATION_COMPLETED(*args, **kwargs),
        )


_BY_NAME: dict[str, type[MetricUsage]] = {
    cls.usage_name: cls
    for cls in (
        EpochWise,
        RunningEpochWise,
        BatchWise,
        RunningBatchWise,
        SingleEpochRunningBatchWise,
    )
}


def as_usage(usage: str | MetricUsage) -> MetricUsage:
    """Returns the usage object for ``usage`` (a :class:`MetricUsage` or one of the ``usage_name`` strings).

    Example:
        >>> as_usage("batch_wise")
        BatchWise()
    """
    if isinstance(usage, MetricUsage):
        return usage
    if isinstance(usage, str):
        if usage == "running":  # an earlier distengine name of running_batch_wise
            return RunningBatchWise()
        cls = _BY_NAME.get(usage)
        if cls is None:
            raise ValueError(
                f"usage must be a MetricUsage or one of {sorted(_BY_NAME)}, got {usage!r}"
            )
        return cls()
    raise TypeError(f"usage must be a str or a MetricUsage, got {type(usage).__name__}")
