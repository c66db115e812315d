"""Factories for the usual supervised trainer and evaluator (device, DDP, AMP, accumulation)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from distengine.engine.datapass import find_resumable_sampler
from distengine.engine.engine import Engine
from distengine.engine.events import Events

__all__ = ["create_supervised_evaluator", "create_supervised_trainer", "prepare_batch"]


def prepare_batch(
    batch: Sequence[torch.Tensor], device: Any = None, non_blocking: bool = False
) -> tuple:
    """Moves an ``(x, y)`` batch to ``device`` (the default ``prepare_batch``)."""
    x, y = batch[0], batch[1]
    if device is None:
        return x, y
    return x.to(device, non_blocking=non_blocking), y.to(device, non_blocking=non_blocking)


def _autocast(
    amp_mode: str | None, device: Any, amp_dtype: torch.dtype | None
) -> Callable[[], Any]:
    if amp_mode is None:
        return contextlib.nullcontext
    if amp_mode != "amp":
        raise ValueError(f"amp_mode must be None or 'amp', got {amp_mode!r}")
    device_type = torch.device(device).type if device is not None else "cpu"
    dtype = amp_dtype or (torch.float16 if device_type == "cuda" else torch.bfloat16)
    return lambda: torch.autocast(device_type=device_type, dtype=dtype)


def _make_scaler(scaler: bool | Any, amp_mode: str | None, device: Any) -> Any | None:
    if scaler is False or scaler is None:
        return None
    if amp_mode != "amp":
        raise ValueError(f"scaler needs amp_mode='amp', got amp_mode={amp_mode!r}")
    if scaler is True:
        device_type = torch.device(device).type if device is not None else "cuda"
        return torch.amp.GradScaler(device_type)
    return scaler


def create_supervised_trainer(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable | torch.nn.Module,
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    prepare_batch: Callable = prepare_batch,
    model_transform: Callable[[Any], Any] = lambda output: output,
    output_transform: Callable[[Any, Any, Any, torch.Tensor], Any] = lambda x, y, y_pred, loss: (
        loss.detach()
    ),
    deterministic: bool = False,
    amp_mode: str | None = None,
    scaler: bool | Any = False,
    gradient_accumulation_steps: int = 1,
    model_fn: Callable[[torch.nn.Module, Any], Any] = lambda model, x: model(x),
    amp_dtype: torch.dtype | None = None,
) -> Engine:
    """A trainer whose process function runs forward, loss, backward and (every
    ``gradient_accumulation_steps`` iterations) the optimizer step.

    Works with a DDP model from ``idist.auto_model``: accumulating steps run under
    ``no_sync`` so gradients are all-reduced once per optimizer step. When the global batch
    of an ``auto_dataloader`` does not divide by the world size (an elastic job resumed on
    another number of ranks), ranks hold unequal shares and each rank's loss is weighted by
    its share (``loader.sampler.loss_weight``), so the optimizer gets the gradient of the
    same global batch at any world size. ``amp_mode="amp"``
    uses ``torch.autocast`` (float16 on CUDA, bfloat16 on CPU, or ``amp_dtype``) and
    ``scaler=True`` a ``GradScaler``. The default output is the loss as a detached tensor
    (no host sync per iteration; Ignite returns ``loss.item()``).

    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> trainer = create_supervised_trainer(model, opt, torch.nn.functional.mse_loss)
        >>> data = [(torch.randn(8, 4), torch.randn(8, 1))] * 3
        >>> trainer.run(data, max_epochs=2).iteration
        6
    """
    if not isinstance(gradient_accumulation_steps, int) or gradient_accumulation_steps < 1:
        raise ValueError(
            f"gradient_accumulation_steps must be a positive int, got {gradient_accumulation_steps!r}"
        )
    autocast = _autocast(amp_mode, device, amp_dtype)
    grad_scaler = _make_scaler(scaler, amp_mode, device)
    accumulate = gradient_accumulation_steps
    no_sync = getattr(model, "no_sync", None)
    share = _ShareWeight()

    def forward_backward(x: Any, y: Any, weight: float) -> tuple[Any, torch.Tensor]:
        if amp_mode is None:  # no context managers on the plain path: they cost per iteration
            y_pred = model_transform(model_fn(model, x))
            loss = loss_fn(y_pred, y)
        else:
            with autocast():
                y_pred = model_transform(model_fn(model, x))
                loss = loss_fn(y_pred, y)
        weighted = loss * weight if weight != 1.0 else loss  # unequal shares of the global batch
        scaled = weighted / accumulate if accumulate > 1 else weighted
        if grad_scaler is not None:
            grad_scaler.scale(scaled).backward()
        else:
            scaled.backward()
        return y_pred, loss

    def update(engine: Engine, batch: Any) -> Any:
        if not model.training:
            model.train()
        it = engine.state.iteration
        stepping = accumulate == 1 or it % accumulate == 0
        if accumulate == 1 or (it - 1) % accumulate == 0:
            optimizer.zero_grad(set_to_none=True)
        x, y = prepare_batch(batch, device=device, non_blocking=non_blocking)
        weight = share(engine)
        if no_sync is not None and not stepping:
            with no_sync():  # DDP: all-reduce gradients only on the stepping iteration
                y_pred, loss = forward_backward(x, y, weight)
        else:
            y_pred, loss = forward_backward(x, y, weight)
        if stepping:
            if grad_scaler is not None:
                grad_scaler.step(optimizer)
                grad_scaler.update()
            else:
                optimizer.step()
        return output_transform(x, y, y_pred, loss)

    trainer = Engine(update)
    if grad_scaler is not None:
        trainer.state.scaler = grad_scaler
    if deterministic:
        trainer.add_event_handler(Events.STARTED, _enable_determinism)
    return trainer


class _ShareWeight:
    """This rank's loss weight for the engine's current data (1.0 unless shares differ)."""

    def __init__(self) -> None:
        self._data: Any = None
        self._weight = 1.0

    def __call__(self, engine: Engine) -> float:
        data = engine.state.dataloader
        if data is not self._data:  # looked up once per loader, not per iteration
            self._data = data
            sampler = find_resumable_sampler(data) if data is not None else None
            self._weight = float(getattr(sampler, "loss_weight", 1.0))
        return self._weight


def _enable_determinism() -> None:
    torch.use_deterministic_algorithms(True, warn_only=True)


def create_supervised_evaluator(
    model: torch.nn.Module,
    metrics: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    prepare_batch: Callable = prepare_batch,
    model_transform: Callable[[Any], Any] = lambda output: output,
    output_transform: Callable[[Any, Any, Any], Any] = lambda x, y, y_pred: (y_pred, y),
    amp_mode: str | None = None,
    model_fn: Callable[[torch.nn.Module, Any], Any] = lambda model, x: model(x),
    amp_dtype: torch.dtype | None = None,
) -> Engine:
    """An evaluator that runs the model under ``torch.no_grad`` and feeds ``metrics``.

    With a loader from ``auto_dataloader(..., shuffle=False)`` every sample is counted
    exactly once across ranks (padding is skipped) and metrics are reduced across ranks.

    Example:
        >>> from distengine.metrics import Accuracy
        >>> model = torch.nn.Linear(4, 3)
        >>> evaluator = create_supervised_evaluator(model, metrics={"acc": Accuracy()})
        >>> data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
        >>> 0.0 <= evaluator.run(data).metrics["acc"] <= 1.0
        True
    """
    autocast = _autocast(amp_mode, device, amp_dtype)

    @torch.no_grad()
    def evaluate(engine: Engine, batch: Any) -> Any:
        if model.training:
            model.eval()
        x, y = prepare_batch(batch, device=device, non_blocking=non_blocking)
        with autocast():
            y_pred = model_transform(model_fn(model, x))
        return output_transform(x, y, y_pred)

    evaluator = Engine(evaluate)
    for name, metric in (metrics or {}).items():
        metric.attach(evaluator, name)
    return evaluator
