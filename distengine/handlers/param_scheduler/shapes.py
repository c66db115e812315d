"""Schedules given by a formula of the event index: cycles (linear, cosine) and piecewise-linear."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from distengine.engine import Engine

from .base import ParamScheduler

__all__ = [
    "CosineAnnealingScheduler",
    "CyclicalScheduler",
    "LinearCyclicalScheduler",
    "PiecewiseLinear",
]


class CyclicalScheduler(ParamScheduler):
    """A value that repeats over cycles of ``cycle_size`` events (base of the cyclical schedules).

    After each cycle, the cycle length is multiplied by ``cycle_mult``, the start value
    by ``start_value_mult`` and the end value by ``end_value_mult``. With
    ``warmup_duration`` > 0, each cycle is followed by a linear ramp of that many events
    from the cycle's end value to the next cycle's start value.

    Args:
        optimizer: the optimizer (or any object with ``param_groups``).
        param_name: the parameter-group key to set.
        start_value: value at the start of a cycle.
        end_value: value in the middle (linear) or at the end (cosine) of a cycle.
        cycle_size: events per cycle (>= 2). On ``ITERATION_*`` events, usually the
            epoch length.
        cycle_mult: factor applied to ``cycle_size`` after each cycle.
        start_value_mult: factor applied to ``start_value`` after each cycle.
        end_value_mult: factor applied to ``end_value`` after each cycle.
        warmup_duration: events of linear ramp before each later cycle.
        save_history: append values to ``engine.state.param_history``.
        param_group_index: schedule only this parameter group.

    Raises:
        ValueError: ``cycle_size`` < 2.
    """

    def __init__(
        self,
        optimizer: Any,
        param_name: str,
        start_value: float,
        end_value: float,
        cycle_size: int,
        cycle_mult: float = 1.0,
        start_value_mult: float = 1.0,
        end_value_mult: float = 1.0,
        warmup_duration: int = 0,
        save_history: bool = False,
        param_group_index: int | None = None,
    ) -> None:
        super().__init__(optimizer, param_name, save_history, param_group_index)
        if cycle_size < 2:
            raise ValueError(
                f"Argument cycle_size should be positive and larger than 1, but given {cycle_size}"
            )
        self.start_value = start_value
        self.end_value = end_value
        self.cycle_size = cycle_size
        self.cycle_mult = cycle_mult
        self.cycle = 0
        self.start_value_mult = start_value_mult
        self.end_value_mult = end_value_mult
        self.warmup_duration = warmup_duration
        self.total_cycle_size = warmup_duration + cycle_size
        self._state_attrs += [
            "start_value",
            "end_value",
            "cycle_size",
            "cycle_mult",
            "cycle",
            "start_value_mult",
            "end_value_mult",
            "warmup_duration",
            "total_cycle_size",
        ]

    def __call__(self, engine: Engine | None, name: str | None = None) -> None:
        if self.event_index != 0:
            if self.event_index == self.cycle_size:  # the cycle proper ends, the ramp begins
                self.start_value *= self.start_value_mult
            if self.event_index == self.total_cycle_size:  # next cycle
                self.event_index = 0
                self.cycle_size = int(self.cycle_size * self.cycle_mult)
                self.warmup_duration = int(self.warmup_duration * self.cycle_mult)
                self.total_cycle_size = self.warmup_duration + self.cycle_size
                self.cycle += 1
                self.end_value *= self.end_value_mult
        super().__call__(engine, name)

    def _get_param(self) -> Any:
        if self.event_index > self.cycle_size:  # in the ramp towards the next cycle
            progress = (self.event_index - self.cycle_size) / self.warmup_duration
            return self.end_value + (self.start_value - self.end_value) * progress
        return self.get_param()


class LinearCyclicalScheduler(CyclicalScheduler):
    """Goes linearly from ``start_value`` to ``end_value`` in half a cycle and back in the other half.

    With ``monotonic=True`` the whole cycle goes from ``start_value`` to ``end_value``
    (then jumps back, or ramps back over ``warmup_duration`` events).

    Args:
        *args: see :class:`CyclicalScheduler`.
        monotonic: one direction per cycle (needed with ``warmup_duration`` > 0).
        **kwargs: see :class:`CyclicalScheduler`.

    Raises:
        ValueError: ``warmup_duration`` > 0 without ``monotonic=True``.

    Example:
        >>> scheduler = LinearCyclicalScheduler(optimizer, "lr", 0.0, 1.0, cycle_size=4,
        ...                                     save_history=True)
        >>> scheduler.attach(trainer)  # at every ITERATION_STARTED
        >>> trainer.run(loader, max_epochs=2).param_history["lr"]
        [[0.0], [0.5], [1.0], [0.5], [0.0], [0.5], [1.0], [0.5]]
    """

    def __init__(self, *args: Any, monotonic: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.monotonic = monotonic
        if self.warmup_duration > 0 and not monotonic:
            raise ValueError(
                "Invalid combination when warmup_duration > 0 and monotonic=False, "
                "please use either set warmup_duration=0 or monotonic=True"
            )

    def get_param(self) -> float:
        progress = self.event_index / self.cycle_size
        if self.monotonic:
            return self.start_value + (self.end_value - self.start_value) * progress
        return self.end_value + (self.start_value - self.end_value) * abs(progress - 0.5) * 2


class CosineAnnealingScheduler(CyclicalScheduler):
    """Half a cosine wave from ``start_value`` to ``end_value`` over each cycle (SGDR-style).

    Args:
        *args: see :class:`CyclicalScheduler`.
        **kwargs: see :class:`CyclicalScheduler`.

    Example:
        >>> scheduler = CosineAnnealingScheduler(optimizer, "lr", 1.0, 0.0, cycle_size=len(loader),
        ...                                      save_history=True)
        >>> scheduler.attach(trainer)  # at every ITERATION_STARTED
        >>> history = trainer.run(loader, max_epochs=2).param_history["lr"]
        >>> [round(lr, 2) for [lr] in history]  # one cycle per epoch
        [1.0, 0.85, 0.5, 0.15, 1.0, 0.85, 0.5, 0.15]
    """

    def get_param(self) -> float:
        progress = self.event_index / self.cycle_size
        return self.start_value + (self.end_value - self.start_value) / 2 * (
            1 - math.cos(math.pi * progress)
        )


class PiecewiseLinear(ParamScheduler):
    """Linear between milestones ``(event_index, value)``, constant before the first and after the last.

    Args:
        optimizer: the optimizer (or any object with ``param_groups``).
        param_name: the parameter-group key to set.
        milestones_values: ``[(event_index, value), ...]`` with non-decreasing event
            indices (two equal indices make a jump).
        save_history: append values to ``engine.state.param_history``.
        param_group_index: schedule only this parameter group.

    Raises:
        TypeError: ``milestones_values`` is not a sequence, or a milestone is not an int.
        ValueError: no milestones, an entry that is not a pair, or decreasing milestones.

    Example:
        >>> scheduler = PiecewiseLinear(optimizer, "lr", [(0, 0.0), (2, 1.0), (4, 0.0)],
        ...                             save_history=True)
        >>> scheduler.attach(trainer)  # at every ITERATION_STARTED
        >>> trainer.run(loader, max_epochs=2).param_history["lr"]
        [[0.0], [0.5], [1.0], [0.5], [0.0], [0.0], [0.0], [0.0]]
    """

    def __init__(
        self,
        optimizer: Any,
        param_name: str,
        milestones_values: Sequence[tuple[int, float]],
        save_history: bool = False,
        param_group_index: int | None = None,
    ) -> None:
        super().__init__(optimizer, param_name, save_history, param_group_index)
        if not isinstance(milestones_values, Sequence):
            raise TypeError(
                "Argument milestones_values should be a list or tuple, but given "
                f"{type(milestones_values).__name__}"
            )
        if len(milestones_values) < 1:
            raise ValueError(
                f"Argument milestones_values should be with at least one value, but given {milestones_values}"
            )
        milestones: list[int] = []
        values: list[float] = []
        for pair in milestones_values:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise ValueError(
                    "Argument milestones_values should be a list of pairs (milestone, param_value), "
                    f"got {pair!r}"
                )
            milestone, value = pair
            if not isinstance(milestone, numbers.Integral):
                raise TypeError(
                    f"Value of a milestone should be integer, but given {type(milestone).__name__}"
                )
            if milestones and milestone < milestones[-1]:
                raise ValueError(
                    f"Milestones should be increasing integers, but given {milestone} is smaller "
                    f"than the previous milestone {milestones[-1]}"
                )
            milestones.append(int(milestone))
            values.append(value)
        self.milestones = milestones
        self.values = values
        self._index = 0  # the segment the last value came from (segments are visited in order)
        self._state_attrs += ["values", "milestones", "_index"]

    def _segment(self) -> tuple[int, int, float, float]:
        i = self.event_index
        if i < self.milestones[0]:
            return i - 1, i, self.values[0], self.values[0]
        if i >= self.milestones[-1]:
            return i, i + 1, self.values[-1], self.values[-1]
        if i < self.milestones[self._index]:  # event_index was moved back by hand
            self._index = 0
        while not self.milestones[self._index] <= i < self.milestones[self._index + 1]:
            self._index += 1
        k = self._index
        return self.milestones[k], self.milestones[k + 1], self.values[k], self.values[k + 1]

    def get_param(self) -> float:
        start, end, start_value, end_value = self._segment()
        return start_value + (end_value - start_value) * (self.event_index - start) / (end - start)
