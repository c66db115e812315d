"""Schedulers of a value kept on ``engine.state`` (a loss weight, a temperature, a probability).

The value is set on every event the scheduler is attached to (``ITERATION_COMPLETED`` by
default) as ``engine.state.<param_name>``. ``attach`` also adds ``param_name`` to the
engine's ``state_dict_user_keys``, so the current value is saved with the engine; with the
scheduler itself in ``Checkpoint``'s ``to_save`` (its ``event_index``), a resumed run
sees the same value in every iteration as the uninterrupted run.
"""

from __future__ import annotations

import numbers
import warnings
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any

from distengine.engine import Engine, Events
from distengine.handlers.param_scheduler.base import BaseParamScheduler, record_history

__all__ = [
    "ExpStateScheduler",
    "LambdaStateScheduler",
    "MultiStepStateScheduler",
    "PiecewiseLinearStateScheduler",
    "StateParamScheduler",
    "StepStateScheduler",
]


class StateParamScheduler(BaseParamScheduler):
    """Sets ``engine.state.<param_name>`` to :meth:`get_param` of the event count (1 at the first event).

    Args:
        param_name: the state attribute to set.
        save_history: append values to ``engine.state.param_history[param_name]``.
        create_new: the attribute must not exist yet (``attach`` raises if it does); with
            ``False`` an existing attribute is overwritten and a missing one is created
            with a warning.
    """

    def __init__(self, param_name: str, save_history: bool = False, create_new: bool = False):
        super().__init__(param_name, save_history)
        self.create_new = create_new

    def attach(self, engine: Engine, event: Any = Events.ITERATION_COMPLETED) -> None:
        """Updates ``engine.state.<param_name>`` on ``event`` (default ``ITERATION_COMPLETED``).

        Raises:
            ValueError: ``create_new=True`` and the attribute exists already (another
                handler may own it).

        Example:
            >>> scheduler = ExpStateScheduler(1.0, 0.5, param_name="kl_weight", create_new=True)
            >>> scheduler.attach(trainer)
            >>> trainer.run(loader, max_epochs=1).kl_weight  # 0.5 ** 4 after 4 iterations
            0.0625
        """
        if hasattr(engine.state, self.param_name):
            if self.create_new:
                raise ValueError(
                    f"Attribute '{self.param_name}' already exists in the engine.state. "
                    "This may be a conflict between multiple handlers. Please choose another name."
                )
        else:
            if not self.create_new:
                warnings.warn(
                    f"Attribute '{self.param_name}' is not defined in the engine.state. "
                    f"{type(self).__name__} will create it. Remove this warning by setting create_new=True.",
                    stacklevel=2,
                )
            setattr(engine.state, self.param_name, None)
        if self.param_name not in engine.state_dict_user_keys:
            engine.state_dict_user_keys.append(self.param_name)
        if self.save_history:
            history = getattr(engine.state, "param_history", None)
            if history is None:
                engine.state.param_history = history = {}
            history.setdefault(self.param_name, [])
        engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        self.event_index += 1
        value = self.get_param()
        setattr(engine.state, self.param_name, value)
        if self.save_history:
            record_history(engine, self.param_name, value)

    @classmethod
    def simulate_values(cls, num_events: int, **scheduler_kwargs: Any) -> list[list[Any]]:
        """Returns ``[[i, value], ...]`` for ``num_events`` events (``save_history`` is ignored).

        Example:
            >>> StepStateScheduler.simulate_values(
            ...     4, param_name="p", initial_value=1.0, gamma=0.5, step_size=2
            ... )
            [[0, 1.0], [1, 0.5], [2, 0.5], [3, 0.25]]
        """
        kwargs = {k: v for k, v in scheduler_kwargs.items() if k != "save_history"}
        scheduler = cls(save_history=False, **kwargs)
        engine = Engine(lambda e, b: None)
        values = []
        for i in range(num_events):
            scheduler(engine)
            values.append([i, getattr(engine.state, scheduler.param_name)])
        return values


class LambdaStateScheduler(StateParamScheduler):
    """``lambda_obj(event_index)``.

    Give a callable object (a class with ``__call__``) rather than a lambda if the
    scheduler goes into a checkpoint: ``lambda_obj`` is part of its state.

    Args:
        lambda_obj: ``event_index -> value``.
        param_name: the state attribute to set.
        save_history: append values to ``engine.state.param_history``.
        create_new: see :class:`StateParamScheduler`.

    Raises:
        ValueError: ``lambda_obj`` is not callable.
    """

    def __init__(
        self,
        lambda_obj: Callable[[int], Any],
        param_name: str,
        save_history: bool = False,
        create_new: bool = False,
    ):
        super().__init__(param_name, save_history, create_new)
        if not callable(lambda_obj):
            raise ValueError(f"Expected lambda_obj to be callable, got {type(lambda_obj).__name__}")
        self.lambda_obj = lambda_obj
        self._state_attrs += ["lambda_obj"]

    def get_param(self) -> Any:
        return self.lambda_obj(self.event_index)


class PiecewiseLinearStateScheduler(StateParamScheduler):
    """Linear between milestones ``(event_index, value)``, constant outside them.

    Args:
        milestones_values: ``[(event_index, value), ...]``, event indices non-decreasing.
        param_name: the state attribute to set.
        save_history: append values to ``engine.state.param_history``.
        create_new: see :class:`StateParamScheduler`.

    Raises:
        TypeError: not a sequence, or a milestone that is not an int.
        ValueError: empty, a non-pair entry, or decreasing milestones.
    """

    def __init__(
        self,
        milestones_values: Sequence[tuple[int, float]],
        param_name: str,
        save_history: bool = False,
        create_new: bool = False,
    ):
        super().__init__(param_name, save_history, create_new)
        if not isinstance(milestones_values, Sequence):
            raise TypeError(
                "Argument milestones_values should be a list or tuple, but given "
                f"{type(milestones_values).__name__}"
            )
        if len(milestones_values) < 1:
            raise ValueError(
                f"Argument milestones_values should be with at least one value, but given {milestones_values}"
            )
        self.milestones: list[int] = []
        self.values: list[float] = []
        for pair in milestones_values:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise ValueError(
                    "Argument milestones_values should be a list of pairs (milestone, param_value), "
                    f"got {pair!r}"
                )
            if not isinstance(pair[0], numbers.Integral):
                raise TypeError(
                    f"Value of a milestone should be integer, but given {type(pair[0]).__name__}"
                )
            if self.milestones and pair[0] < self.milestones[-1]:
                raise ValueError(
                    f"Milestones should be increasing integers, but given {pair[0]} is smaller "
                    f"than the previous milestone {self.milestones[-1]}"
                )
            self.milestones.append(int(pair[0]))
            self.values.append(pair[1])
        self._index = 0
        self._state_attrs += ["values", "milestones", "_index"]

    def get_param(self) -> float:
        i, ms, vs = self.event_index, self.milestones, self.values
        if i < ms[0]:
            start, end, v0, v1 = i - 1, i, vs[0], vs[0]
        elif i >= ms[-1]:
            start, end, v0, v1 = i, i + 1, vs[-1], vs[-1]
        else:
            if i < ms[self._index]:
                self._index = 0
            while not ms[self._index] <= i < ms[self._index + 1]:
                self._index += 1
            k = self._index
            start, end, v0, v1 = ms[k], ms[k + 1], vs[k], vs[k + 1]
        return v0 + (v1 - v0) * (i - start) / (end - start)  # a float, also where constant


class ExpStateScheduler(StateParamScheduler):
    """``initial_value * gamma ** event_index``.

    Args:
        initial_value: the value at event 0.
        gamma: the factor per event.
        param_name: the state attribute to set.
        save_history: append values to ``engine.state.param_history``.
        create_new: see :class:`StateParamScheduler`.
    """

    def __init__(
        self,
        initial_value: float,
        gamma: float,
        param_name: str,
        save_history: bool = False,
        create_new: bool = False,
    ):
        super().__init__(param_name, save_history, create_new)
        self.initial_value = initial_value
        self.gamma = gamma
        self._state_attrs += ["initial_value", "gamma"]

    def get_param(self) -> float:
        return self.initial_value * self.gamma**self.event_index


class StepStateScheduler(StateParamScheduler):
    """``initial_value * gamma ** (event_index // step_size)``.

    Args:
        initial_value: the value before the first step.
        gamma: the factor per step.
        step_size: events per step.
        param_name: the state attribute to set.
        save_history: append values to ``engine.state.param_history``.
        create_new: see :class:`StateParamScheduler`.
    """

    def __init__(
        self,
        initial_value: float,
        gamma: float,
        step_size: int,
        param_name: str,
        save_history: bool = False,
        create_new: bool = False,
    ):
        super().__init__(param_name, save_history, create_new)
        self.initial_value = initial_value
        self.gamma = gamma
        self.step_size = step_size
        self._state_attrs += ["initial_value", "gamma", "step_size"]

    def get_param(self) -> float:
        return self.initial_value * self.gamma ** (self.event_index // self.step_size)


class MultiStepStateScheduler(StateParamScheduler):
    """``initial_value * gamma ** (number of milestones <= event_index)``.

    Args:
        initial_value: the value before the first milestone.
        gamma: the factor at each milestone.
        milestones: increasing event indices.
        param_name: the state attribute to set.
        save_history: append values to ``engine.state.param_history``.
        create_new: see :class:`StateParamScheduler`.
    """

    def __init__(
        self,
        initial_value: float,
        gamma: float,
        milestones: list[int],
        param_name: str,
        save_history: bool = False,
        create_new: bool = False,
    ):
        super().__init__(param_name, save_history, create_new)
        self.initial_value = initial_value
        self.gamma = gamma
        self.milestones = milestones
        self._state_attrs += ["initial_value", "gamma", "milestones"]

    def get_param(self) -> float:
        return self.initial_value * self.gamma ** bisect_right(self.milestones, self.event_index)
