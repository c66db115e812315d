"""EMAHandler: an exponential moving average of a model's weights, updated during training."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from distengine.engine import Engine, Events
from distengine.handlers.state_param_scheduler import LambdaStateScheduler

__all__ = ["EMAHandler"]


class _MomentumWarmup:
    """Linear momentum from ``start`` (event 1) to ``end`` (event ``iters``), then ``end``.

    A class rather than a closure, so that it can be part of a checkpointed state.
    """

    def __init__(self, start: float, iters: int, end: float) -> None:
        self.start, self.iters, self.end = start, iters, end

    def __call__(self, event_index: int) -> float:
        value = self.start + (self.end - self.start) * (event_index - 1) / max(1, self.iters - 1)
        return min(self.end, value) if self.end >= self.start else max(self.end, value)


class EMAHandler:
    r"""Keeps ``ema_model``, an exponential moving average of ``model``'s weights.

    On each event (``ITERATION_COMPLETED`` by default) every EMA parameter becomes
    :math:`(1 - m)\,\theta_{EMA} + m\,\theta`, with the momentum ``m`` read from
    ``engine.state.<name>`` (constant, or warmed up linearly from ``momentum_warmup``
    over ``warmup_iters`` events). A ``DistributedDataParallel`` model is averaged through
    its ``module``; every rank holds the same weights after each step, so every rank
    keeps the same average. Give the handler itself to ``Checkpoint`` (its
    ``state_dict`` holds the EMA weights and the warm-up position) to resume exactly.

    Args:
        model: the trained model.
        momentum: the momentum after warm-up, in (0, 1).
        momentum_warmup: the momentum at the first event (with ``warmup_iters``).
        warmup_iters: events of linear warm-up.
        handle_buffers: ``"copy"`` (take the model's buffers, e.g. BatchNorm
            statistics), ``"update"`` (average them too; integer buffers are copied) or
            ``"ema_train"`` (leave them to the EMA model, kept in train mode).

    Raises:
        ValueError: ``momentum`` outside (0, 1), a ``model`` that is not a module, or an
            unknown ``handle_buffers``.

    Example:
        >>> from distengine.engine import create_supervised_evaluator
        >>> from distengine.metrics import Accuracy
        >>> ema = EMAHandler(model, momentum=0.0002, momentum_warmup=0.01, warmup_iters=1000)
        >>> ema.attach(trainer)
        >>> ema_evaluator = create_supervised_evaluator(ema.ema_model, metrics={"acc": Accuracy()})
        >>> state = trainer.run(loader, max_epochs=1)
        >>> ema_evaluator.run(loader).metrics["acc"]  # doctest: +ELLIPSIS
        0...
        >>> to_save = {"trainer": trainer, "model": model, "ema": ema}
    """

    def __init__(
        self,
        model: nn.Module,
        momentum: float = 0.0002,
        momentum_warmup: float | None = None,
        warmup_iters: int | None = None,
        handle_buffers: str = "copy",
    ) -> None:
        if not 0 < momentum < 1:
            raise ValueError(f"Invalid momentum: {momentum} (expected a value in (0, 1))")
        if not isinstance(model, nn.Module):
            raise ValueError(
                "model should be an instance of nn.Module or its subclasses, "
                f"got {type(model).__name__}"
            )
        if handle_buffers not in ("copy", "update", "ema_train"):
            raise ValueError(
                "handle_buffers can only be one of 'copy', 'update', 'ema_train', "
                f"got {handle_buffers!r}"
            )
        self.momentum = momentum
        self._momentum_lambda_obj: _MomentumWarmup | None = None
        self.momentum_scheduler: LambdaStateScheduler | None = None
        if momentum_warmup is not None and warmup_iters is not None:
            self._momentum_lambda_obj = _MomentumWarmup(momentum_warmup, warmup_iters, momentum)
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        self.model = model
        self.ema_model = copy.deepcopy(model)
        for p in self.ema_model.parameters():
            p.detach_()
        self.handle_buffers = handle_buffers
        self.ema_model.train(handle_buffers == "ema_train")

    @torch.no_grad()
    def _update_ema_model(self, engine: Engine, name: str) -> None:
        m = getattr(engine.state, name)
        for ema_p, p in zip(self.ema_model.parameters(), self.model.parameters()):
            ema_p.mul_(1.0 - m).add_(p.data, alpha=m)
        if self.handle_buffers == "ema_train":
            return
        for ema_b, b in zip(self.ema_model.buffers(), self.model.buffers()):
            if self.handle_buffers == "update" and ema_b.is_floating_point():
                ema_b.mul_(1.0 - m).add_(b.data, alpha=m)
            else:
                ema_b.copy_(b)

    def attach(
        self,
        engine: Engine,
        name: str = "ema_momentum",
        warn_if_exists: bool = True,
        event: Any = Events.ITERATION_COMPLETED,
    ) -> None:
        """Updates the momentum ``engine.state.<name>`` and then the EMA model on ``event``.

        Args:
            engine: the trainer.
            name: the state attribute of the momentum (one per handler when a trainer has
                several).
            warn_if_exists: warn if ``engine.state.<name>`` exists already (a loaded
                engine state, or another handler using that name).
            event: when to update.
        """
        if hasattr(engine.state, name):
            if warn_if_exists:
                warnings.warn(
                    f"Attribute '{name}' already exists in Engine.state. It might be from a loaded "
                    "engine state or from another handler; pass warn_if_exists=False to silence this.",
                    UserWarning,
                    stacklevel=2,
                )
        else:
            setattr(engine.state, name, self.momentum)
        if self._momentum_lambda_obj is not None:
            self.momentum_scheduler = LambdaStateScheduler(
                self._momentum_lambda_obj, param_name=name, create_new=False
            )
            with warnings.catch_warnings():  # the attribute exists: no "will create it"
                warnings.simplefilter("ignore")
                self.momentum_scheduler.attach(engine, event)
        engine.add_event_handler(event, self._update_ema_model, name)

    def state_dict(self) -> dict[str, Any]:
        """Returns ``{"ema_model": ..., "momentum_scheduler": ... or None}``."""
        scheduler = self.momentum_scheduler
        return {
            "ema_model": self.ema_model.state_dict(),
            "momentum_scheduler": {"event_index": scheduler.event_index} if scheduler else None,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores the EMA weights and the warm-up position saved by :meth:`state_dict`.

        Raises:
            ValueError: ``ema_model`` is missing.
        """
        if "ema_model" not in state_dict:
            raise ValueError(
                f"EMAHandler state_dict needs 'ema_model', got keys {sorted(state_dict)}"
            )
        self.ema_model.load_state_dict(state_dict["ema_model"])
        saved = state_dict.get("momentum_scheduler")
        if saved is not None:
            if self.momentum_scheduler is None:
                raise ValueError(
                    "the saved EMAHandler had a momentum warm-up; attach() this one first"
                )
            self.momentum_scheduler.event_index = int(saved["event_index"])
