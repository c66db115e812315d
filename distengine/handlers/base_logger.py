"""Ignite's logger protocol: a logger attaches *log handlers*, objects called as
``handler(engine, logger, event_name)`` on the events they are attached to.

- :class:`BaseLogger` attaches handlers on the main process only (other ranks register
  nothing, so nothing is computed, opened or written there, and no collective is ever
  made) and builds its standard handlers in :meth:`BaseLogger.attach_output_handler` and
  :meth:`BaseLogger.attach_opt_params_handler`.
- :class:`BaseOutputHandler`, :class:`BaseOptimizerParamsHandler`,
  :class:`BaseWeightsHandler` and :class:`BaseWeightsScalarHandler` hold what to log;
  subclasses say how.
- :func:`global_step_from_engine` labels an evaluator's values with the trainer's step.

The scalar loggers of distengine (CSV, TensorBoard) are in :mod:`.scalar_logger`.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch

import distengine.distributed as idist
from distengine.engine import Engine, EventsList
from distengine.handlers._scalars import EVENT_ORDER, event_counter, flatten, gather
from distengine.handlers._scalars import event_name as event_name_of

STANDARD_EVENTS = frozenset(
    (*EVENT_ORDER, "GET_BATCH_STARTED", "GET_BATCH_COMPLETED", "TERMINATE", "INTERRUPT")
)

__all__ = [
    "BaseHandler",
    "BaseLogger",
    "BaseOptimizerParamsHandler",
    "BaseOutputHandler",
    "BaseWeightsHandler",
    "BaseWeightsScalarHandler",
    "StepFromEngine",
    "default_step",
    "global_step_from_engine",
]


def _counter_value(state: Any, event_name: Any, fallback_attr: str | None = None) -> int:
    """The counter an event is counted by on ``state`` (its registered one for a custom event).

    An event with no counter gives ``state.<fallback_attr>`` (when given).
    """
    if event_name in state.event_to_attr:
        return state.get_event_attrib_value(event_name)
    if fallback_attr is not None and event_name_of(event_name) not in STANDARD_EVENTS:
        return getattr(state, fallback_attr)
    return getattr(state, event_counter(event_name))  # a filtered standard event


class StepFromEngine:
    """Callable ``(engine, event_name) -> step`` that reads another engine's counters
    (what :func:`global_step_from_engine` returns; a logger labels rows with that engine's
    epoch and iteration)."""

    def __init__(
        self, engine: Engine, custom_event_name: Any = None, fallback_attr: str = "epoch"
    ) -> None:
        self.engine = engine
        self.custom_event_name = custom_event_name
        self.fallback_attr = fallback_attr

    def __call__(self, engine: Engine, event_name: Any) -> int:
        event = self.custom_event_name if self.custom_event_name is not None else event_name
        return _counter_value(self.engine.state, event, self.fallback_attr)


def global_step_from_engine(
    engine: Engine, custom_event_name: Any = None, fallback_attr: str = "epoch"
) -> Callable[[Engine, Any], int]:
    """Labels logged values with another engine's counters (usually the trainer's).

    Pass the result as ``global_step_transform`` when logging an evaluator: the step is
    the trainer's iteration for iteration events and its epoch otherwise, and CSV rows
    carry the trainer's epoch and iteration.

    Args:
        engine: the engine whose ``state`` gives the step.
        custom_event_name: take the counter of this event instead of the logged one
            (e.g. ``Events.ITERATION_COMPLETED`` to label epoch-end values by iteration).
        fallback_attr: the ``engine.state`` attribute used for an event without a
            counter (a custom event registered without ``event_to_attr``).

    Returns:
        A ``(engine, event_name) -> int`` callable.

    Example:
        >>> from distengine.handlers import CSVLogger
        >>> logger = CSVLogger("log.csv")
        >>> @trainer.on(Events.EPOCH_COMPLETED)
        ... def validate():
        ...     evaluator.run(loader)
        >>> _ = logger.attach_output_handler(evaluator, Events.COMPLETED, tag="validation",
        ...                                  output_transform=lambda out: {"rows": len(out[1])},
        ...                                  global_step_transform=global_step_from_engine(trainer))
        >>> state = trainer.run(loader, max_epochs=2)
        >>> logger.close()
        >>> print(open("log.csv").read())  # the trainer's epoch and iteration
        epoch,iteration,validation/rows
        1,4,4
        2,8,4
        <BLANKLINE>
    """
    if not isinstance(engine, Engine):
        raise TypeError(f"engine should be an Engine, got {type(engine).__name__}")
    if not isinstance(fallback_attr, str):
        raise TypeError(f"fallback_attr should be a str, got {type(fallback_attr).__name__}")
    return StepFromEngine(engine, custom_event_name, fallback_attr)


def check_optimizer(optimizer: Any) -> None:
    """Raises ``TypeError`` unless ``optimizer`` has a list or tuple of ``param_groups``."""
    if not (
        isinstance(optimizer, torch.optim.Optimizer)
        or isinstance(getattr(optimizer, "param_groups", None), Sequence)
    ):
        raise TypeError(
            "Argument optimizer should be torch.optim.Optimizer or has attribute 'param_groups' "
            f"as list/tuple, but given {type(optimizer).__name__}"
        )


class BaseHandler(ABC):
    """A log handler: ``handler(engine, logger, event_name)`` logs what it was built for."""

    @abstractmethod
    def __call__(self, engine: Engine, logger: Any, event_name: Any) -> Any: ...


class BaseOutputHandler(BaseHandler):
    """Logs chosen metrics, the transformed output and state attributes under ``tag``.

    Args:
        tag: prefix of the names (``"training"``, ``"validation"``).
        metric_names: names in ``engine.state.metrics``, or ``"all"``.
        output_transform: maps ``engine.state.output`` to a number (logged as
            ``output``) or a ``{name: value}`` dict.
        global_step_transform: ``(engine, event_name) -> step``; default: the engine's
            counter of the event (iteration or epoch).
        state_attributes: names of ``engine.state`` attributes to log.

    Raises:
        TypeError: ``metric_names`` neither a list nor ``"all"``, or a transform that is
            not callable.
        ValueError: none of ``metric_names``, ``output_transform`` and
            ``state_attributes`` given.
    """

    def __init__(
        self,
        tag: str,
        metric_names: str | list[str] | None = None,
        output_transform: Callable[[Any], Any] | None = None,
        global_step_transform: Callable[[Engine, Any], int] | None = None,
        state_attributes: list[str] | None = None,
    ) -> None:
        if metric_names is not None and not (
            metric_names == "all"
            or (
                isinstance(metric_names, (list, tuple))
                and all(isinstance(n, str) for n in metric_names)
            )
        ):
            raise TypeError(
                f"metric_names should be either a list or equal 'all', got {metric_names!r}"
            )
        if output_transform is not None and not callable(output_transform):
            raise TypeError(
                f"output_transform should be a function, got {type(output_transform).__name__}"
            )
        if output_transform is None and metric_names is None and state_attributes is None:
            raise ValueError(
                "Either metric_names, output_transform or state_attributes should be defined"
            )
        if global_step_transform is not None and not callable(global_step_transform):
            raise TypeError(
                "global_step_transform should be a function, got "
                f"{type(global_step_transform).__name__}"
            )
        self.tag = tag
        self.metric_names = list(metric_names) if isinstance(metric_names, tuple) else metric_names
        self.output_transform = output_transform
        self.global_step_transform = global_step_transform or default_step
        self.state_attributes = state_attributes

    def _setup_output_metrics_state_attrs(
        self, engine: Engine, log_text: bool | None = False, key_tuple: bool | None = True
    ) -> dict[Any, Any]:
        """The values to log, flattened: ``{(tag, name, ...): scalar}`` or ``{"tag/name/...": scalar}``.

        Nested dicts, lists, tuples and 1-d tensors give one entry per element; strings
        are kept only with ``log_text``.
        """
        values = gather(engine, self.metric_names, self.output_transform, self.state_attributes)
        prefix = (self.tag,) if self.tag else ()
        flat: dict[Any, Any] = {}
        for name, value in values.items():
            flat.update(flatten((*prefix, str(name)), value, allow_text=bool(log_text)))
        if key_tuple:
            return flat
        return {"/".join(k): v for k, v in flat.items()}


def default_step(engine: Engine, event_name: Any) -> int:
    """The engine's counter of ``event_name`` (its registered one for a custom event)."""
    return _counter_value(engine.state, event_name)


class BaseOptimizerParamsHandler(BaseHandler):
    """Logs ``param_name`` of each parameter group of ``optimizer``.

    Args:
        optimizer: a ``torch.optim.Optimizer`` or anything with ``param_groups``.
        param_name: the group key (``"lr"``, ``"weight_decay"``, ...).
        tag: optional prefix.

    Raises:
        TypeError: ``optimizer`` has no list of ``param_groups``.
    """

    def __init__(self, optimizer: Any, param_name: str = "lr", tag: str | None = None) -> None:
        check_optimizer(optimizer)
        self.optimizer = optimizer
        self.param_name = param_name
        self.tag = tag


class BaseWeightsHandler(BaseHandler):
    """Logs something about each parameter of ``model`` (selected by ``whitelist``).

    Args:
        model: the module.
        tag: optional prefix.
        whitelist: names (prefixes) of the parameters to log, or a predicate
            ``(name, parameter) -> bool``; default: all.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tag: str | None = None,
        whitelist: list[str] | Callable[[str, torch.nn.Parameter], bool] | None = None,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                f"Argument model should be of type torch.nn.Module, but given {type(model).__name__}"
            )
        self.model = model
        self.tag = tag
        named = list(model.named_parameters())
        if whitelist is None:
            chosen = named
        elif callable(whitelist):
            chosen = [(n, p) for n, p in named if whitelist(n, p)]
        else:
            prefixes = tuple(whitelist)
            chosen = [(n, p) for n, p in named if n.startswith(prefixes)]
        self.weights = tuple(chosen)


class BaseWeightsScalarHandler(BaseWeightsHandler):
    """Logs ``reduction(parameter)`` (a scalar, the norm by default) of each chosen parameter.

    Args:
        model: the module.
        reduction: tensor -> scalar (a number or a 0-d tensor).
        tag: optional prefix.
        whitelist: see :class:`BaseWeightsHandler`.

    Raises:
        TypeError: ``reduction`` is not callable or does not return a scalar.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        reduction: Callable[[torch.Tensor], float | torch.Tensor] = torch.norm,
        tag: str | None = None,
        whitelist: list[str] | Callable[[str, torch.nn.Parameter], bool] | None = None,
    ) -> None:
        super().__init__(model, tag=tag, whitelist=whitelist)
        if not callable(reduction):
            raise TypeError(
                f"Argument reduction should be callable, but given {type(reduction).__name__}"
            )
        probe = reduction(torch.ones(4, 2))
        if not (
            isinstance(probe, numbers.Number)
            or (isinstance(probe, torch.Tensor) and probe.ndim == 0)
        ):
            raise TypeError(
                f"Output of the reduction function should be a scalar, but got {type(probe).__name__}"
            )
        self.reduction = reduction


class BaseLogger(ABC):
    """Attaches log handlers to engines, on the main process only.

    On other ranks (``idist.get_rank() > 0``) the ``attach*`` methods register nothing
    and return ``None``. Subclasses build their standard handlers in
    ``_create_output_handler`` and ``_create_opt_params_handler``, and release their
    output in ``close`` (also called when leaving a ``with`` block).

    Example:
        >>> class PrintOutput(BaseOutputHandler):
        ...     def __call__(self, engine, logger, event_name):
        ...         values = self._setup_output_metrics_state_attrs(engine, key_tuple=False)
        ...         print(engine.state.epoch, values)
        >>> class PrintLogger(BaseLogger):
        ...     def _create_output_handler(self, *args, **kwargs):
        ...         return PrintOutput(*args, **kwargs)
        ...     def _create_opt_params_handler(self, *args, **kwargs):
        ...         raise NotImplementedError("this logger prints outputs only")
        >>> handle = PrintLogger().attach_output_handler(
        ...     trainer, Events.EPOCH_COMPLETED, tag="train", state_attributes=["seed"])
        >>> state = trainer.run(loader, max_epochs=2, seed=7)
        1 {'train/seed': 7}
        2 {'train/seed': 7}
    """

    def attach(
        self,
        engine: Engine,
        log_handler: Callable[..., Any],
        event_name: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """Calls ``log_handler(engine, self, event, *args, **kwargs)`` on ``event_name``.

        Args:
            engine: the engine to log.
            log_handler: a handler (e.g. an ``OutputHandler``) or any such callable.
            event_name: an event of ``engine`` (filters allowed) or an ``EventsList``
                (``Events.STARTED | Events.COMPLETED``); each event is passed as it fires.
            *args: more arguments of ``log_handler``.
            **kwargs: more keyword arguments of ``log_handler``.

        Returns:
            A removable handle (one per event for an ``EventsList``: a list), or ``None``
            on ranks other than the main one.

        Raises:
            RuntimeError: ``event_name`` is not an event of ``engine``.
        """
        events = list(event_name) if isinstance(event_name, EventsList) else [event_name]
        for event in events:
            if not engine.has_registered_events(event):
                raise RuntimeError(f"Unknown event name '{event}' for this engine")
        if not idist.is_main_process():
            return None
        handles = [
            engine.add_event_handler(event, log_handler, self, event, *args, **kwargs)
            for event in events
        ]
        return handles if isinstance(event_name, EventsList) else handles[0]

    def attach_output_handler(
        self, engine: Engine, event_name: Any, *args: Any, **kwargs: Any
    ) -> Any:
        """Attaches ``self._create_output_handler(*args, **kwargs)`` (an output handler).

        The arguments are those of the logger's ``OutputHandler``: ``tag``,
        ``metric_names``, ``output_transform``, ``global_step_transform``,
        ``state_attributes``.

        Example:
            >>> from distengine.handlers import CSVLogger
            >>> with CSVLogger("log.csv") as logger:
            ...     handle = logger.attach_output_handler(
            ...         trainer, Events.ITERATION_COMPLETED(every=2), tag="training",
            ...         output_transform=lambda loss: {"loss": loss})
            ...     state = trainer.run(loader, max_epochs=1)
            >>> print(open("log.csv").readline(), end="")
            epoch,iteration,training/loss
        """
        return self.attach(engine, self._create_output_handler(*args, **kwargs), event_name)

    def attach_opt_params_handler(
        self, engine: Engine, event_name: Any, *args: Any, **kwargs: Any
    ) -> Any:
        """Attaches ``self._create_opt_params_handler(*args, **kwargs)``.

        The arguments are those of the logger's ``OptimizerParamsHandler``:
        ``optimizer``, ``param_name="lr"``, ``tag``.

        Example:
            >>> from distengine.handlers import CSVLogger
            >>> with CSVLogger("log.csv") as logger:
            ...     handle = logger.attach_opt_params_handler(trainer, Events.EPOCH_STARTED, optimizer)
            ...     state = trainer.run(loader, max_epochs=2)
            >>> print(open("log.csv").read())
            epoch,iteration,lr/group_0
            1,0,0.1
            2,4,0.1
            <BLANKLINE>
        """
        return self.attach(engine, self._create_opt_params_handler(*args, **kwargs), event_name)

    @abstractmethod
    def _create_output_handler(self, *args: Any, **kwargs: Any) -> Callable[..., Any]: ...

    @abstractmethod
    def _create_opt_params_handler(self, *args: Any, **kwargs: Any) -> Callable[..., Any]: ...

    def close(self) -> None:  # noqa: B027  (a logger without output has nothing to close)
        """Flushes and releases the logger's output (nothing to do here)."""

    def __enter__(self) -> BaseLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
