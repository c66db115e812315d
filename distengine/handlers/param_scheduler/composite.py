"""Schedulers made of schedulers: one after another (:class:`ConcatScheduler`) and one per
parameter group (:class:`ParamGroupScheduler`)."""

from __future__ import annotations

import copy
import itertools
import numbers
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from distengine.engine import Engine, Events

from .base import ParamScheduler

__all__ = ["ConcatScheduler", "ParamGroupScheduler"]


def _flat(values: Sequence[Any]) -> list[Any]:
    return list(itertools.chain(*(v if isinstance(v, list) else [v] for v in values)))


def _unique(items: list[Any], what: str) -> Any:
    distinct = []
    for item in items:  # by identity for optimizers, by value for names
        if not any(item is d or (isinstance(item, str) and item == d) for d in distinct):
            distinct.append(item)
    if len(distinct) != 1:
        raise ValueError(f"schedulers should be related to same {what}, got {len(distinct)}")
    return distinct[0]


def _check_state_dict(state_dict: Any, count: int, what: str) -> list[Any]:
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"Argument state_dict should be a dictionary, but given {type(state_dict).__name__}"
        )
    if "schedulers" not in state_dict:
        raise ValueError(
            f"Required state attribute 'schedulers' is absent in provided state_dict {sorted(state_dict)}"
        )
    states = state_dict["schedulers"]
    if len(states) != count:
        raise ValueError(
            f"Input state_dict contains {len(states)} state_dicts of {what}, but {count} needed"
        )
    return list(states)


class ParamGroupScheduler:
    """Several schedulers called as one (typically one per parameter group).

    Args:
        schedulers: parameter schedulers.
        names: the name each one records its history under (default: their
            ``param_name``).
        save_history: append values to ``engine.state.param_history``.

    Raises:
        TypeError: ``schedulers`` or ``names`` is not a list or tuple.
        ValueError: an item is not a :class:`ParamScheduler`, a name is not a str, or the
            lengths differ.

    Example:
        >>> from distengine.handlers import CosineAnnealingScheduler
        >>> optimizer = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias]}], lr=0.1)
        >>> backbone = CosineAnnealingScheduler(optimizer, "lr", 1e-3, 1e-5, 100, param_group_index=0)
        >>> head = CosineAnnealingScheduler(optimizer, "lr", 1e-2, 1e-4, 100, param_group_index=1)
        >>> scheduler = ParamGroupScheduler([backbone, head], names=["lr (base)", "lr (head)"])
        >>> scheduler.attach(trainer)
        >>> [group["lr"] for group in optimizer.param_groups]  # set at the first iteration
        [0.1, 0.1]
        >>> scheduler(None)
        >>> [group["lr"] for group in optimizer.param_groups]
        [0.001, 0.01]
    """

    def __init__(
        self,
        schedulers: Sequence[ParamScheduler],
        names: Sequence[str] | None = None,
        save_history: bool = False,
    ) -> None:
        if not isinstance(schedulers, Sequence):
            raise TypeError(f"Argument schedulers should be a list/tuple, but given {schedulers!r}")
        if not all(isinstance(s, ParamScheduler) for s in schedulers):
            raise ValueError(
                f"Argument schedulers should be a list/tuple of parameter schedulers, but given {schedulers!r}"
            )
        if names is None:
            names = [s.param_name for s in schedulers]
        if not isinstance(names, (list, tuple)):
            raise TypeError(f"Argument names should be a list/tuple, but given {names!r}")
        if not all(isinstance(n, str) for n in names):
            raise ValueError(
                f"Argument names should be a list/tuple of parameter scheduler's names, but given {names!r}"
            )
        if len(names) != len(schedulers):
            raise ValueError(
                f"{len(schedulers)} should be equal {len(names)}: one name per scheduler"
            )
        self.schedulers = list(schedulers)
        self.names = list(names)
        for s in self.schedulers:
            s.save_history = save_history
        self.optimizer = [s.optimizer for s in self.schedulers]
        self.param_name = [s.param_name for s in self.schedulers]

    def __call__(self, engine: Engine | None, name: str | None = None) -> None:
        for scheduler, own_name in zip(self.schedulers, self.names):
            scheduler(engine, own_name)

    def attach(self, engine: Engine, event: Any = Events.ITERATION_STARTED) -> None:
        """Calls the schedulers on ``event`` of ``engine`` (default ``ITERATION_STARTED``)."""
        engine.add_event_handler(event, self)

    @property
    def optimizer_param_groups(self) -> list[dict[str, Any]]:
        """The parameter groups of all the schedulers, in order."""
        return [g for s in self.schedulers for g in s.optimizer_param_groups]

    @property
    def save_history(self) -> bool:
        """Whether values are appended to ``engine.state.param_history``."""
        return self.schedulers[0].save_history

    @save_history.setter
    def save_history(self, value: bool) -> None:
        for s in self.schedulers:
            s.save_history = value

    def get_param(self) -> list[Any]:
        """Returns each scheduler's current value."""
        return [s.get_param() for s in self.schedulers]

    def state_dict(self) -> dict[str, Any]:
        """Returns ``{"schedulers": [(name, state_dict), ...]}``."""
        return OrderedDict(
            schedulers=[(n, s.state_dict()) for n, s in zip(self.names, self.schedulers)]
        )

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores each scheduler from :meth:`state_dict`.

        Raises:
            TypeError: ``state_dict`` is not a mapping.
            ValueError: ``schedulers`` missing, a different number of schedulers, or a name
                that differs.
        """
        states = _check_state_dict(state_dict, len(self.schedulers), "param group schedulers")
        for expected, scheduler, (name, sd) in zip(self.names, self.schedulers, states):
            if name != expected:
                raise ValueError(
                    "Name of scheduler from input state dict does not correspond to required one, "
                    f"{name} vs {expected}"
                )
            scheduler.load_state_dict(sd)

    @classmethod
    def simulate_values(
        cls, num_events: int, schedulers: Sequence[ParamScheduler], **kwargs: Any
    ) -> list[list[Any]]:
        """Returns ``[[i, value of scheduler 0, value of scheduler 1, ...], ...]``; the schedulers and
        their optimizers are left as they were."""
        saved = [copy.deepcopy(s.state_dict()) for s in schedulers]
        optimizers = [s.optimizer for s in schedulers]
        saved_opt = [copy.deepcopy(o.state_dict()) for o in optimizers]
        try:
            scheduler = cls(schedulers=schedulers, **kwargs)
            values = []
            for i in range(num_events):
                values.append([i, *(s.get_param() for s in schedulers)])
                scheduler(engine=None)
            return values
        finally:
            for s, sd in zip(schedulers, saved):
                s.load_state_dict(sd)
            for o, sd in zip(optimizers, saved_opt):
                o.load_state_dict(sd)


class ConcatScheduler(ParamScheduler):
    """Schedulers one after another: the first for ``durations[0]`` events, and so on.

    The last scheduler runs until the end. All must set the same parameter of the same
    optimizer.

    Args:
        schedulers: two or more :class:`ParamScheduler` or :class:`ParamGroupScheduler`.
        durations: events per scheduler, one fewer than ``schedulers``.
        save_history: append values to ``engine.state.param_history``.

    Raises:
        TypeError: ``schedulers``/``durations`` of the wrong type.
        ValueError: fewer than two schedulers, non-integer durations, wrong counts, or
            schedulers of different optimizers or parameters.

    Example:
        >>> from distengine.handlers import CosineAnnealingScheduler, LinearCyclicalScheduler
        >>> warm = LinearCyclicalScheduler(optimizer, "lr", 0.0, 1.0, cycle_size=8)
        >>> decay = CosineAnnealingScheduler(optimizer, "lr", 1.0, 0.2, cycle_size=4)
        >>> scheduler = ConcatScheduler([warm, decay], durations=[4], save_history=True)
        >>> scheduler.attach(trainer)
        >>> history = trainer.run(loader, max_epochs=2).param_history["lr"]
        >>> [round(lr, 2) for [lr] in history]
        [0.0, 0.25, 0.5, 0.75, 1.0, 0.88, 0.6, 0.32]
    """

    def __init__(
        self,
        schedulers: Sequence[ParamScheduler | ParamGroupScheduler],
        durations: Sequence[int],
        save_history: bool = False,
    ) -> None:
        if not isinstance(schedulers, Sequence):
            raise TypeError(f"Argument schedulers should be a sequence, but given {schedulers!r}")
        if len(schedulers) < 2:
            raise ValueError(
                f"Argument schedulers should be of more than one parameter schedulers, but given {schedulers!r}"
            )
        if not isinstance(durations, (list, tuple)):
            raise TypeError(f"Argument durations should be list/tuple, but given {durations!r}")
        if not all(isinstance(d, numbers.Integral) for d in durations):
            raise ValueError(
                f"Argument durations should be list/tuple of integers, but given {durations!r}"
            )
        if len(schedulers) != len(durations) + 1:
            raise ValueError(
                "Incorrect number schedulers or duration values, given "
                f"{len(schedulers)} and {len(durations)}: expected one duration fewer than schedulers"
            )
        for i, s in enumerate(schedulers):
            if not isinstance(s, (ParamScheduler, ParamGroupScheduler)):
                raise TypeError(
                    f"Value at index {i} of schedulers should be a parameter scheduler, but given {type(s).__name__}"
                )
        optimizer = _unique(_flat([s.optimizer for s in schedulers]), "optimizer")
        param_name = _unique(_flat([s.param_name for s in schedulers]), "param_name")
        self.schedulers = list(schedulers)
        self.durations = [int(d) for d in durations]
        for s in self.schedulers:
            s.save_history = save_history
        super().__init__(optimizer=optimizer, param_name=param_name, save_history=save_history)
        self._scheduler_index = 0
        self._setup_scheduler()
        self._state_attrs += ["_current_duration", "durations", "_scheduler_index"]

    def _setup_scheduler(self) -> None:
        self._current_scheduler = self.schedulers[self._scheduler_index]
        k = self._scheduler_index
        self._current_duration = self.durations[k] if k < len(self.durations) else -1

    def __call__(self, engine: Engine | None, name: str | None = None) -> None:
        if self._current_duration == 0:
            self._scheduler_index += 1
            self._setup_scheduler()
        self._current_scheduler(engine, name)
        self._current_duration -= 1

    @property
    def optimizer_param_groups(self) -> list[dict[str, Any]]:
        """The current scheduler's parameter groups."""
        return self._current_scheduler.optimizer_param_groups

    @property
    def save_history(self) -> bool:
        """Whether values are appended to ``engine.state.param_history``."""
        return self._current_scheduler.save_history

    @save_history.setter
    def save_history(self, value: bool) -> None:
        for s in self.schedulers:
            s.save_history = value

    def get_param(self) -> Any:
        """Returns the current scheduler's value."""
        return self._current_scheduler.get_param()

    def state_dict(self) -> dict[str, Any]:
        """This scheduler's position plus ``"schedulers"``: each scheduler's state."""
        out = super().state_dict()
        out["schedulers"] = [s.state_dict() for s in self.schedulers]
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores the position and every scheduler from :meth:`state_dict`.

        Raises:
            TypeError: ``state_dict`` is not a mapping.
            ValueError: ``schedulers`` or another attribute is missing, or the number of
                schedulers differs.
        """
        states = _check_state_dict(state_dict, len(self.schedulers), "concatenated schedulers")
        for s, sd in zip(self.schedulers, states):
            s.load_state_dict(sd)
        super().load_state_dict(state_dict)
        self._current_scheduler = self.schedulers[self._scheduler_index]

    @classmethod
    def simulate_values(  # type: ignore[override]
        cls,
        num_events: int,
        schedulers: Sequence[ParamScheduler | ParamGroupScheduler],
        durations: Sequence[int],
        param_names: Sequence[str] | None = None,
    ) -> list[list[Any]]:
        """Returns ``[[i, value, ...], ...]`` (one value per group and name in ``param_names``).

        The schedulers and their optimizer are left as they were.

        Args:
            num_events: number of events to simulate.
            schedulers: as for the constructor.
            durations: as for the constructor.
            param_names: the parameters to report (default: the scheduled one).

        Raises:
            TypeError: ``param_names`` is not a list or tuple.
            ValueError: ``param_names`` holds something other than str, or the schedulers
                belong to different optimizers.
        """
        if param_names is not None:
            if not isinstance(param_names, (list, tuple)):
                raise TypeError(
                    f"Argument param_names should be list or tuple, but given {type(param_names).__name__}"
                )
            if not all(isinstance(n, str) for n in param_names):
                raise ValueError(
                    f"Argument param_names should be list or tuple of strings, but given {param_names!r}"
                )
        optimizer = _unique(_flat([s.optimizer for s in schedulers]), "optimizer")
        saved = [copy.deepcopy(s.state_dict()) for s in schedulers]
        saved_history = [s.save_history for s in schedulers]
        saved_opt = copy.deepcopy(optimizer.state_dict())
        try:
            scheduler = cls(schedulers=schedulers, durations=durations, save_history=False)
            names = list(param_names) if param_names is not None else [scheduler.param_name]
            values = []
            for i in range(num_events):
                scheduler(engine=None)
                row: list[Any] = [i]
                for n in names:
                    row += [g[n] for g in scheduler.optimizer_param_groups]
                values.append(row)
            return values
        finally:
            for s, sd, history in zip(schedulers, saved, saved_history):
                s.load_state_dict(sd)
                s.save_history = history
            optimizer.load_state_dict(saved_opt)
