"""torch's own schedulers as handlers: :class:`LRScheduler` and :class:`ReduceLROnPlateauScheduler`."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, ReduceLROnPlateau
from torch.optim.lr_scheduler import LRScheduler as TorchLRScheduler

from distengine.engine import Engine

from .base import ParamScheduler, fake_optimizer

__all__ = ["LRScheduler", "ReduceLROnPlateauScheduler"]


class _WarmRestartsStepper:
    """Drives ``CosineAnnealingWarmRestarts`` one event at a time without calling its ``step``.

    That scheduler advances its position inside ``step``; here ``get_lr`` advances it, so
    :class:`LRScheduler` can handle it like the others (value first, then ``last_epoch``).
    """

    def __init__(self, scheduler: CosineAnnealingWarmRestarts) -> None:
        self.scheduler = scheduler

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.scheduler.optimizer

    @property
    def last_epoch(self) -> int:
        return self.scheduler.last_epoch

    @last_epoch.setter
    def last_epoch(self, value: int) -> None:
        self.scheduler.last_epoch = value

    @property
    def _get_lr_called_within_step(self) -> bool:
        return self.scheduler._get_lr_called_within_step

    @_get_lr_called_within_step.setter
    def _get_lr_called_within_step(self, value: bool) -> None:
        self.scheduler._get_lr_called_within_step = value

    def get_lr(self) -> list[float]:
        s = self.scheduler
        if self.last_epoch >= 0:
            s.T_cur += 1
            if s.T_cur >= s.T_i:
                s.T_cur -= s.T_i
                s.T_i *= s.T_mult
        return [
            s.eta_min + (base - s.eta_min) * (1 + math.cos(math.pi * s.T_cur / s.T_i)) / 2
            for base in s.base_lrs
        ]

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.scheduler.load_state_dict(dict(state_dict))


def _check_torch_scheduler(lr_scheduler: Any) -> None:
    if not isinstance(lr_scheduler, TorchLRScheduler):
        raise TypeError(
            "Argument lr_scheduler should be a subclass of torch.optim.lr_scheduler.LRScheduler, "
            f"but given {type(lr_scheduler).__name__}"
        )


class LRScheduler(ParamScheduler):
    """A ``torch.optim.lr_scheduler`` scheduler as a handler (attach it to ``ITERATION_STARTED``).

    On each event the torch scheduler's next learning rate is set, then its
    ``last_epoch`` advances: the first event uses the optimizer's initial learning rate.
    Its ``state_dict`` includes the torch scheduler's, so both resume together (give
    the optimizer to ``Checkpoint`` too: chainable schedulers read its current lr).

    Args:
        lr_scheduler: the torch scheduler (not ``ReduceLROnPlateau``: see
            :class:`ReduceLROnPlateauScheduler`).
        save_history: append values to ``engine.state.param_history``.
        use_legacy: for handlers attached to ``ITERATION_COMPLETED`` (Ignite < 0.4.9).

    Raises:
        TypeError: ``lr_scheduler`` is not a torch ``LRScheduler``.

    Example:
        >>> from torch.optim.lr_scheduler import StepLR
        >>> scheduler = LRScheduler(StepLR(optimizer, step_size=3, gamma=0.5), save_history=True)
        >>> scheduler.attach(trainer)  # at every ITERATION_STARTED
        >>> to_save = {"trainer": trainer, "optimizer": optimizer, "lr_scheduler": scheduler}
        >>> trainer.run(loader, max_epochs=2).param_history["lr"]
        [[0.1], [0.1], [0.1], [0.05], [0.05], [0.05], [0.025], [0.025]]
    """

    def __init__(
        self, lr_scheduler: TorchLRScheduler, save_history: bool = False, use_legacy: bool = False
    ) -> None:
        _check_torch_scheduler(lr_scheduler)
        self.lr_scheduler: Any = (
            _WarmRestartsStepper(lr_scheduler)
            if isinstance(lr_scheduler, CosineAnnealingWarmRestarts)
            else lr_scheduler
        )
        super().__init__(lr_scheduler.optimizer, "lr", save_history=save_history)
        if use_legacy:
            warnings.warn(
                "use_legacy=True: attach this scheduler to Events.ITERATION_COMPLETED, otherwise "
                "the optimizer's first learning rate is skipped",
                stacklevel=2,
            )
            self.lr_scheduler.last_epoch += 1
        self._state_attrs += ["lr_scheduler"]

    def __call__(self, engine: Engine | None, name: str | None = None) -> None:
        super().__call__(engine, name)
        self.lr_scheduler.last_epoch += 1

    def get_param(self) -> Any:
        """Returns the torch scheduler's next learning rate (one per group when there are several)."""
        self.lr_scheduler._get_lr_called_within_step = True
        try:
            lrs = self.lr_scheduler.get_lr()
        finally:
            self.lr_scheduler._get_lr_called_within_step = False
        return lrs[0] if len(lrs) == 1 else list(lrs)

    @classmethod
    def simulate_values(  # type: ignore[override]
        cls, num_events: int, lr_scheduler: TorchLRScheduler, **kwargs: Any
    ) -> list[list[Any]]:
        """Returns ``[[i, lr of group 0, ...], ...]``; ``lr_scheduler`` and its optimizer are left as they were.

        Raises:
            TypeError: ``lr_scheduler`` is not a torch ``LRScheduler``.
        """
        _check_torch_scheduler(lr_scheduler)
        saved = copy.deepcopy(lr_scheduler.state_dict())
        saved_opt = copy.deepcopy(lr_scheduler.optimizer.state_dict())
        try:
            scheduler = cls(lr_scheduler, save_history=False, **kwargs)
            values = []
            for i in range(num_events):
                scheduler(engine=None)
                values.append(
                    [i, *(g[scheduler.param_name] for g in scheduler.optimizer_param_groups)]
                )
            return values
        finally:
            lr_scheduler.load_state_dict(saved)
            lr_scheduler.optimizer.load_state_dict(saved_opt)


class _PlateauOnGroups(ReduceLROnPlateau):
    """``ReduceLROnPlateau`` that lowers one parameter group only (or all with ``group_index=None``).

    A subclass rather than a patched method, so that its ``state_dict`` holds only data
    (a checkpoint stays loadable with ``weights_only=True``).
    """

    def __init__(self, optimizer: Any, group_index: int | None, **kwargs: Any) -> None:
        self.group_index = group_index
        super().__init__(optimizer, **kwargs)

    def _reduce_lr(self, epoch: Any = None) -> None:
        groups = list(enumerate(self.optimizer.param_groups))
        if self.group_index is not None:
            groups = [groups[self.group_index]]
        for i, group in groups:
            old = float(group["lr"])
            new = max(old * self.factor, self.min_lrs[i])
            if old - new > self.eps:
                group["lr"] = new


class ReduceLROnPlateauScheduler(ParamScheduler):
    """Lowers the learning rate when a metric stops improving (torch's ``ReduceLROnPlateau``).

    Attach it where the metric is known (usually the evaluator's ``COMPLETED``); it reads
    ``engine.state.metrics[metric_name]`` (reduced across ranks, so every rank decides
    alike). Its ``state_dict`` includes the torch scheduler's (best value, patience count).

    Args:
        optimizer: the optimizer.
        metric_name: the monitored metric, attached to the same engine.
        trainer: the engine whose ``state.param_history`` records the values.
        save_history: record the values in ``trainer.state.param_history``.
        param_group_index: reduce only this group's learning rate.
        **scheduler_kwargs: ``ReduceLROnPlateau``'s arguments (``mode``, ``factor``,
            ``patience``, ``threshold``, ``threshold_mode``, ``cooldown``, ``min_lr``,
            ``eps``).

    Raises:
        TypeError: ``min_lr`` is not a float while ``param_group_index`` is given.
        ValueError: (when called) the engine has no metric ``metric_name``.

    Example:
        >>> from distengine.metrics import Accuracy
        >>> Accuracy().attach(evaluator, "accuracy")
        >>> scheduler = ReduceLROnPlateauScheduler(
        ...     optimizer, metric_name="accuracy", mode="max", factor=0.5, patience=1, trainer=trainer
        ... )
        >>> scheduler.attach(evaluator, Events.COMPLETED)
        >>> @trainer.on(Events.EPOCH_COMPLETED)
        ... def validate():
        ...     evaluator.run(loader)
        >>> state = trainer.run(loader, max_epochs=3)
        >>> optimizer.param_groups[0]["lr"]  # halved if accuracy stalled for 2 evaluations
        0.1
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        metric_name: str,
        trainer: Engine | None = None,
        save_history: bool = False,
        param_group_index: int | None = None,
        **scheduler_kwargs: Any,
    ) -> None:
        super().__init__(
            optimizer, "lr", save_history=save_history, param_group_index=param_group_index
        )
        self.metric_name = metric_name
        self.trainer = trainer
        kwargs = dict(scheduler_kwargs)
        min_lr: Any = 0
        if "min_lr" in kwargs and param_group_index is not None:
            if not isinstance(kwargs["min_lr"], float):
                raise TypeError(
                    "When param_group_index is given, min_lr should be a float, but given "
                    f"{type(kwargs['min_lr']).__name__}"
                )
            min_lr = [0.0] * len(optimizer.param_groups)
            min_lr[param_group_index] = kwargs["min_lr"]
        kwargs["min_lr"] = min_lr
        if "verbose" in kwargs:
            warnings.warn(
                "verbose=True in scheduler_kwargs is ignored; use save_history instead",
                stacklevel=2,
            )
            del kwargs["verbose"]
        self.scheduler = _PlateauOnGroups(optimizer, param_group_index, **kwargs)
        self._state_attrs += ["metric_name", "scheduler"]

    def __call__(self, engine: Engine, name: str | None = None) -> None:  # type: ignore[override]
        metrics = getattr(engine.state, "metrics", None)
        if not metrics or self.metric_name not in metrics:
            raise ValueError(
                "Argument engine should have in its 'state', attribute 'metrics' "
                f"which itself has the metric {self.metric_name}."
            )
        self.scheduler.step(metrics[self.metric_name])
        super().__call__(self.trainer, name)

    def get_param(self) -> Any:
        """Returns the groups' current learning rate (this scheduler only lowers it when told to)."""
        lrs = [g["lr"] for g in self.optimizer_param_groups]
        return lrs[0] if len(lrs) == 1 else lrs

    @classmethod
    def simulate_values(  # type: ignore[override]
        cls, num_events: int, metric_values: list[float], init_lr: float, **scheduler_kwargs: Any
    ) -> list[list[Any]]:
        """Returns ``[[i, lr], ...]`` for the given metric values, starting from ``init_lr``.

        Raises:
            ValueError: ``len(metric_values) != num_events``.
        """
        if len(metric_values) != num_events:
            raise ValueError(
                "Length of argument metric_values should be equal to num_events. "
                f"{len(metric_values)} != {num_events}"
            )
        kwargs = {
            k: v
            for k, v in scheduler_kwargs.items()
            if k not in ("optimizer", "metric_name", "save_history")
        }
        scheduler = cls(fake_optimizer(init_lr), metric_name="metric", save_history=False, **kwargs)
        engine = Engine(lambda engine, batch: None)
        values = []
        for i in range(num_events):
            engine.state.metrics["metric"] = metric_values[i]
            scheduler(engine=engine)
            values.append([i, scheduler.optimizer_param_groups[0][scheduler.param_name]])
        return values
