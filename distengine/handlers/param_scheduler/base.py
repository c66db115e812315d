"""The scheduler protocol: a handler that sets one value per event, and whose position is state.

A scheduler is called once per event it is attached to (``ITERATION_STARTED`` by
default). Each call computes the value for the current *event index*, writes it (into
the optimizer's parameter groups, or the engine's state), and advances the index. Every
attribute that decides later values is listed in ``_state_attrs`` and travels through
``state_dict``/``load_state_dict``, so a scheduler given to ``Checkpoint`` resumes exactly
where it stopped: the first value after a resume is the one the uninterrupted run set.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from distengine.engine import Engine, Events

__all__ = ["BaseParamScheduler", "ParamScheduler", "check_optimizer", "fake_optimizer"]


def check_optimizer(optimizer: Any) -> None:
    """Raises ``TypeError`` unless ``optimizer`` is an optimizer or has a sequence of ``param_groups``."""
    if not (
        isinstance(optimizer, torch.optim.Optimizer)
        or isinstance(getattr(optimizer, "param_groups", None), Sequence)
    ):
        raise TypeError(
            "Argument optimizer should be torch.optim.Optimizer or have a list/tuple attribute "
            f"'param_groups', but given {type(optimizer).__name__}"
        )


def fake_optimizer(lr: float = 0.01) -> torch.optim.Optimizer:
    """A one-parameter SGD optimizer for ``simulate_values``."""
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)


def record_history(engine: Engine | None, name: str, value: Any) -> None:
    """Appends ``value`` to ``engine.state.param_history[name]`` (created on first use)."""
    if engine is None:
        return
    history = getattr(engine.state, "param_history", None)
    if history is None:
        history = {}
        engine.state.param_history = history
    history.setdefault(name, []).append(value)


class BaseParamScheduler(ABC):
    """A value that changes with each event; its position (``event_index``) is state.

    Subclasses implement :meth:`get_param` (the value at ``event_index``) and
    ``simulate_values``, and list the attributes that decide later values in
    ``_state_attrs``.

    Args:
        param_name: what is scheduled (an optimizer group key or a state attribute).
        save_history: append each value to ``engine.state.param_history[param_name]``.
    """

    def __init__(self, param_name: str, save_history: bool = False) -> None:
        self.param_name = param_name
        self.event_index = 0
        self._save_history = save_history
        self._state_attrs = ["event_index", "param_name", "save_history"]

    @property
    def save_history(self) -> bool:
        """Whether values are appended to ``engine.state.param_history``."""
        return self._save_history

    @save_history.setter
    def save_history(self, value: bool) -> None:
        self._save_history = value

    def state_dict(self) -> dict[str, Any]:
        """Returns the attributes that decide the next values (``event_index`` first).

        Nested schedulers (and wrapped torch schedulers) contribute their own
        ``state_dict()``.

        Example:
            >>> from distengine.handlers import LinearCyclicalScheduler
            >>> scheduler = LinearCyclicalScheduler(optimizer, "lr", 0.0, 1.0, cycle_size=4)
            >>> scheduler.attach(trainer)
            >>> state = trainer.run(loader, max_epochs=1)
            >>> sd = scheduler.state_dict()
            >>> sd["event_index"]  # events seen so far
            4
        """
        out: dict[str, Any] = OrderedDict()
        for name in self._state_attrs:
            if hasattr(self, name):
                value = getattr(self, name)
                if hasattr(value, "state_dict"):
                    value = value.state_dict()
                out[name] = copy.copy(value)
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned; the next call continues from there.

        Raises:
            TypeError: ``state_dict`` is not a mapping.
            ValueError: a required attribute is missing.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"Argument state_dict should be a dictionary, but given {type(state_dict).__name__}"
            )
        for name in self._state_attrs:
            if name not in state_dict:
                raise ValueError(
                    f"Required state attribute '{name}' is absent in provided state_dict "
                    f"{sorted(state_dict)}"
                )
        for name in self._state_attrs:
            value = state_dict[name]
            current = getattr(self, name, None)
            if isinstance(value, Mapping) and hasattr(current, "load_state_dict"):
                current.load_state_dict(value)
            else:
                setattr(self, name, value)

    @abstractmethod
    def get_param(self) -> Any:
        """Returns the value at the current ``event_index`` (a number, or one per parameter group)."""

    @classmethod
    @abstractmethod
    def simulate_values(cls, num_events: int, **scheduler_kwargs: Any) -> list[list[Any]]:
        """Returns ``[[event_index, value], ...]`` for ``num_events`` events, without touching real state."""

    @classmethod
    def plot_values(cls, num_events: int, **scheduler_kwargs: Any) -> Any:
        """Plots :meth:`simulate_values` with matplotlib (which must be installed).

        Returns:
            The matplotlib lines.

        Raises:
            ModuleNotFoundError: matplotlib is not installed.

        Example:
            >>> from distengine.handlers import LinearCyclicalScheduler
            >>> LinearCyclicalScheduler.plot_values(  # needs matplotlib, not a dependency  # doctest: +SKIP
            ...     num_events=50, param_name="lr", start_value=1e-1, end_value=1e-3, cycle_size=10
            ... )
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            raise ModuleNotFoundError(
                "This method requires matplotlib to be installed: pip install matplotlib"
            ) from None
        values = cls.simulate_values(num_events=num_events, **scheduler_kwargs)
        label = scheduler_kwargs.get("param_name", "learning rate")
        lines = plt.plot([e for e, *_ in values], [v for _, v, *_ in values], label=label)
        plt.legend()
        plt.grid(which="both")
        return lines


class ParamScheduler(BaseParamScheduler):
    """Sets ``param_name`` of an optimizer's parameter groups on every event.

    The scheduler writes absolute values: whatever the optimizer holds before (new, or
    set by another scheduler), the value at ``event_index`` is what it sets. Subclasses
    implement :meth:`get_param`; return a list to set each group to its own value.

    Args:
        optimizer: a ``torch.optim.Optimizer``, or any object with a list of
            ``param_groups`` (e.g. a DeepSpeed or apex wrapper).
        param_name: the key to set in each group (``"lr"``, ``"momentum"``, ...).
        save_history: append the groups' values to ``engine.state.param_history``.
        param_group_index: schedule only this group (default: every group).

    Raises:
        TypeError: ``optimizer`` has no ``param_groups``.

    Example:
        >>> class Halving(ParamScheduler):
        ...     def get_param(self):
        ...         return 0.1 * 0.5**self.event_index
        ...     @classmethod
        ...     def simulate_values(cls, num_events, **kwargs):
        ...         return [[i, 0.1 * 0.5**i] for i in range(num_events)]
        >>> Halving(optimizer, "lr", save_history=True).attach(trainer)
        >>> trainer.run(loader, max_epochs=1).param_history["lr"]
        [[0.1], [0.05], [0.025], [0.0125]]
    """

    def __init__(
        self,
        optimizer: Any,
        param_name: str,
        save_history: bool = False,
        param_group_index: int | None = None,
    ) -> None:
        super().__init__(param_name, save_history)
        check_optimizer(optimizer)
        self.optimizer = optimizer
        self.param_group_index = param_group_index
        self._state_attrs += ["param_group_index"]

    def attach(self, engine: Engine, event: Any = Events.ITERATION_STARTED) -> None:
        """Calls the scheduler on ``event`` of ``engine`` (default ``ITERATION_STARTED``).

        Example:
            >>> from distengine.handlers import LinearCyclicalScheduler
            >>> scheduler = LinearCyclicalScheduler(optimizer, "lr", 0.0, 1.0, cycle_size=4)
            >>> scheduler.attach(trainer, Events.EPOCH_STARTED)  # one value per epoch
        """
        engine.add_event_handler(event, self)

    @property
    def optimizer_param_groups(self) -> list[dict[str, Any]]:
        """The parameter groups this scheduler sets."""
        groups = self.optimizer.param_groups
        return list(groups) if self.param_group_index is None else [groups[self.param_group_index]]

    def __call__(self, engine: Engine | None, name: str | None = None) -> None:
        value = self._get_param()
        groups = self.optimizer_param_groups
        if isinstance(value, list):
            if len(value) != len(groups):
                raise ValueError(
                    "size of value is different than optimizer_param_groups: "
                    f"{len(value)} values for {len(groups)} parameter groups"
                )
            for group, v in zip(groups, value):
                group[self.param_name] = v
        else:
            for group in groups:
                group[self.param_name] = value
        if self.save_history:
            record_history(engine, name or self.param_name, [g[self.param_name] for g in groups])
        self.event_index += 1

    def _get_param(self) -> Any:
        # Subclasses that add phases (cyclical warm-up) override this, not get_param.
        return self.get_param()

    @classmethod
    def simulate_values(cls, num_events: int, **scheduler_kwargs: Any) -> list[list[Any]]:
        """Returns ``[[i, value_i], ...]`` from a scheduler of this class on a stand-in optimizer.

        Args:
            num_events: number of events to simulate.
            **scheduler_kwargs: the scheduler's arguments (``optimizer`` and
                ``save_history`` are ignored).

        Example:
            >>> from distengine.handlers import LinearCyclicalScheduler
            >>> LinearCyclicalScheduler.simulate_values(
            ...     4, param_name="lr", start_value=1.0, end_value=0.0, cycle_size=4
            ... )
            [[0, 1.0], [1, 0.5], [2, 0.0], [3, 0.5]]
        """
        kwargs = {
            k: v for k, v in scheduler_kwargs.items() if k not in ("optimizer", "save_history")
        }
        scheduler = cls(optimizer=fake_optimizer(), save_history=False, **kwargs)
        values = []
        for i in range(num_events):
            scheduler(engine=None)
            values.append([i, scheduler.optimizer_param_groups[0][scheduler.param_name]])
        return values
