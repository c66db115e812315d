"""Supervised steps and the trainer/evaluator built from them (device, DDP, AMP, accumulation).

The training step follows the batch geometry the engine records for loaders from
``auto_dataloader`` (``state.batch_padding``, ``state.batch_loss_scale``): a rank whose
batch is a padding row still runs forward and backward (so DDP's gradient all-reduce, or
FSDP's all-gathers and reduce-scatters, match on every rank) but contributes a zero
gradient, and a rank holding an unequal share of the global batch weights its mean loss so
that the average over ranks is the mean over the global batch. With other data both are at
their defaults and the step is the usual one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from distengine.engine.deterministic import DeterministicEngine
from distengine.engine.engine import Engine

__all__ = [
    "create_supervised_evaluator",
    "create_supervised_trainer",
    "prepare_batch",
    "supervised_evaluation_step",
    "supervised_evaluation_step_amp",
    "supervised_training_step",
    "supervised_training_step_amp",
]


def prepare_batch(
    batch: Sequence[torch.Tensor], device: Any = None, non_blocking: bool = False
) -> tuple:
    """Moves an ``(x, y)`` batch to ``device`` (the default ``prepare_batch``)."""
    x, y = batch[0], batch[1]
    if device is None:
        return x, y
    return x.to(device, non_blocking=non_blocking), y.to(device, non_blocking=non_blocking)


def _default_train_output(x: Any, y: Any, y_pred: Any, loss: torch.Tensor) -> Any:
    return loss.detach()


def _default_eval_output(x: Any, y: Any, y_pred: Any) -> Any:
    return y_pred, y


def _identity(output: Any) -> Any:
    return output


def _call_model(model: torch.nn.Module, x: Any) -> Any:
    return model(x)


def _autocast(
    amp_mode: str | None, device: Any, amp_dtype: torch.dtype | None
) -> Callable[[], Any] | None:
    if amp_mode is None:
        return None
    if amp_mode != "amp":
        raise ValueError(f"amp_mode must be None or 'amp', got {amp_mode!r}")
    device_type = torch.device(device).type if device is not None else "cpu"
    dtype = amp_dtype or (torch.float16 if device_type == "cuda" else torch.bfloat16)
    return lambda: torch.autocast(device_type=device_type, dtype=dtype)


def _make_scaler(scaler: bool | Any, device: Any) -> Any | None:
    if scaler is False or scaler is None:
        return None
    if scaler is True:
        device_type = torch.device(device).type if device is not None else "cuda"
        return torch.amp.GradScaler(device_type)
    return scaler


def _check_arg(
    on_tpu: bool, on_mps: bool, amp_mode: str | None, scaler: bool | Any, device: Any = None
) -> tuple[str | None, Any | None]:
    """Checks the device/AMP/scaler combination; returns ``(amp_mode, GradScaler or None)``.

    Ignite's private helper of the same name and arguments (its tests call it); ``True``
    as ``scaler`` becomes a ``torch.amp.GradScaler`` for ``device``'s type (CUDA when
    ``device`` is None).

    Raises:
        ValueError: AMP on an MPS device, an ``amp_mode`` other than None or ``"amp"``,
            or a ``scaler`` without ``amp_mode="amp"``.
        RuntimeError: ``on_tpu`` (distengine has no XLA support).

    Example:
        >>> _check_arg(False, False, None, False)
        (None, None)
    """
    if on_mps and amp_mode:
        raise ValueError(f"amp_mode cannot be used on an MPS device, got amp_mode={amp_mode!r}")
    if on_tpu:
        raise RuntimeError("XLA (TPU) devices are not supported: distengine has no XLA support")
    if amp_mode not in (None, "amp"):
        raise ValueError(f"amp_mode must be None or 'amp', got {amp_mode!r}")
    if scaler not in (False, None) and amp_mode != "amp":
        raise ValueError(
            f"scaler argument is {scaler}, but amp_mode is {amp_mode}: a scaler needs amp_mode='amp'"
        )
    return amp_mode, _make_scaler(scaler, device)


def _check_accumulation(steps: object) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(
            "Gradient_accumulation_steps must be strictly positive: expected a positive int "
            f"(1: no accumulation), got {steps!r}"
        )


def _zero_loss(y_pred: Any) -> torch.Tensor:
    """0 times every floating tensor of ``y_pred``: a loss whose gradient is zero for exactly
    the parameters the forward pass used (what DDP expects each iteration)."""
    leaves: list[torch.Tensor] = []

    def collect(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            if v.is_floating_point() or v.is_complex():
                leaves.append(v)
        elif isinstance(v, Mapping):
            for item in v.values():
                collect(item)
        elif isinstance(v, (list, tuple)):
            for item in v:
                collect(item)

    collect(y_pred)
    if not leaves:
        raise TypeError(
            "The model output holds no floating tensor: cannot make the zero-gradient loss of a "
            "padding batch"
        )
    return sum(t.sum() for t in leaves) * 0.0


def _training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable,
    device: Any,
    non_blocking: bool,
    prepare_batch: Callable,
    model_transform: Callable,
    output_transform: Callable,
    gradient_accumulation_steps: int,
    model_fn: Callable,
    autocast: Callable[[], Any] | None,
    grad_scaler: Any | None,
) -> Callable[[Engine, Any], Any]:
    _check_accumulation(gradient_accumulation_steps)
    accumulate = gradient_accumulation_steps
    no_sync = getattr(model, "no_sync", None)
    # FSDP2: reduce-scatter gradients only on the stepping iteration
    set_sync = getattr(model, "set_requires_gradient_sync", None) if accumulate > 1 else None

    def forward_backward(x: Any, y: Any, padding: bool, weight: float) -> tuple[Any, torch.Tensor]:
        if autocast is None:
            y_pred = model_transform(model_fn(model, x))
            loss = _zero_loss(y_pred) if padding else loss_fn(y_pred, y)
        else:
            with autocast():
                y_pred = model_transform(model_fn(model, x))
                loss = _zero_loss(y_pred) if padding else loss_fn(y_pred, y)
        scaled = loss
        if weight != 1.0:
            scaled = scaled * weight
        if accumulate > 1:
            scaled = scaled / accumulate
        if grad_scaler is not None:
            grad_scaler.scale(scaled).backward()
        else:
            scaled.backward()
        return y_pred, loss

    def update(engine: Engine, batch: Any) -> Any:
        it = engine.state.iteration
        stepping = accumulate == 1 or it % accumulate == 0
        if accumulate == 1 or (it - 1) % accumulate == 0:
            optimizer.zero_grad(set_to_none=True)
        padding = bool(engine.state.batch_padding)
        # a padding row runs in eval mode: no dropout draw, no batch-norm statistics
        if model.training == padding:
            model.train(not padding)
        x, y = prepare_batch(batch, device=device, non_blocking=non_blocking)
        weight = engine.state.batch_loss_scale
        if set_sync is not None:
            set_sync(stepping)
        if no_sync is not None and not stepping:
            with no_sync():  # DDP: all-reduce gradients only on the stepping iteration
                y_pred, loss = forward_backward(x, y, padding, weight)
        else:
            y_pred, loss = forward_backward(x, y, padding, weight)
        if padding:
            model.train()
        if stepping:
            if grad_scaler is not None:
                grad_scaler.step(optimizer)
                grad_scaler.update()
            else:
                optimizer.step()
        return output_transform(x, y, y_pred, loss)

    return update


def supervised_training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable | torch.nn.Module,
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    prepare_batch: Callable = prepare_batch,
    model_transform: Callable[[Any], Any] = _identity,
    output_transform: Callable[[Any, Any, Any, torch.Tensor], Any] = _default_train_output,
    gradient_accumulation_steps: int = 1,
    model_fn: Callable[[torch.nn.Module, Any], Any] = _call_model,
) -> Callable[[Engine, Any], Any]:
    """Builds the process function of a supervised trainer: forward, loss, backward, and (every
    ``gradient_accumulation_steps`` iterations) the optimizer step.

    As Ignite's, except the default output is ``loss.detach()`` (no host sync) and the
    padding rules of the module docstring.

    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> trainer = Engine(supervised_training_step(model, opt, torch.nn.functional.mse_loss))
        >>> trainer.run([(torch.randn(8, 4), torch.randn(8, 1))] * 2).iteration
        2
    """
    return _training_step(
        model,
        optimizer,
        loss_fn,
        device,
        non_blocking,
        prepare_batch,
        model_transform,
        output_transform,
        gradient_accumulation_steps,
        model_fn,
        None,
        None,
    )


def supervised_training_step_tpu(*args: Any, **kwargs: Any) -> Callable[[Engine, Any], Any]:
    """Refuses Ignite's process-function factory for XLA (TPU) devices, which distengine does not
    support (``idist.has_xla_support`` is ``False``).

    Raises:
        RuntimeError: always, naming the supported alternatives.

    Example:
        >>> supervised_training_step_tpu(model, optimizer, torch.nn.MSELoss(), "xla")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        RuntimeError: ...
    """
    raise RuntimeError(
        "supervised_training_step_tpu: distengine does not support XLA (TPU) devices; "
        "train on CUDA or CPU with supervised_training_step or create_supervised_trainer"
    )


def supervised_training_step_apex(*args: Any, **kwargs: Any) -> Callable[[Engine, Any], Any]:
    """Refuses Ignite's process-function factory for NVIDIA apex AMP, which distengine does not
    support: mixed precision is ``torch.autocast`` (:func:`supervised_training_step_amp`,
    ``create_supervised_trainer(..., amp_mode="amp")``).

    Raises:
        RuntimeError: always, naming the alternative.

    Example:
        >>> supervised_training_step_apex(model, optimizer, torch.nn.MSELoss(), "cuda")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        RuntimeError: ...
    """
    raise RuntimeError(
        "supervised_training_step_apex: NVIDIA apex AMP is not supported; use "
        "supervised_training_step_amp or create_supervised_trainer(..., amp_mode='amp') "
        "(torch.autocast)"
    )


def supervised_training_step_amp(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable | torch.nn.Module,
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    prepare_batch: Callable = prepare_batch,
    model_transform: Callable[[Any], Any] = _identity,
    output_transform: Callable[[Any, Any, Any, torch.Tensor], Any] = _default_train_output,
    scaler: Any | None = None,
    gradient_accumulation_steps: int = 1,
    model_fn: Callable[[torch.nn.Module, Any], Any] = _call_model,
    amp_dtype: torch.dtype | None = None,
) -> Callable[[Engine, Any], Any]:
    """Builds :func:`supervised_training_step` under ``torch.autocast`` (float16 on CUDA, bfloat16 on
    CPU, or ``amp_dtype``), with an optional ``torch.amp.GradScaler``.

    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> step = supervised_training_step_amp(model, opt, torch.nn.functional.mse_loss, "cpu")
        >>> Engine(step).run([(torch.randn(8, 4), torch.randn(8, 1))]).iteration
        1
    """
    return _training_step(
        model,
        optimizer,
        loss_fn,
        device,
        non_blocking,
        prepare_batch,
        model_transform,
        output_transform,
        gradient_accumulation_steps,
        model_fn,
        _autocast("amp", device, amp_dtype),
        scaler,
    )


def create_supervised_trainer(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable | torch.nn.Module,
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    prepare_batch: Callable = prepare_batch,
    model_transform: Callable[[Any], Any] = _identity,
    output_transform: Callable[[Any, Any, Any, torch.Tensor], Any] = _default_train_output,
    deterministic: bool = False,
    amp_mode: str | None = None,
    scaler: bool | Any = False,
    gradient_accumulation_steps: int = 1,
    model_fn: Callable[[torch.nn.Module, Any], Any] = _call_model,
    amp_dtype: torch.dtype | None = None,
) -> Engine:
    """Creates a trainer whose process function runs forward, loss, backward and (every
    ``gradient_accumulation_steps`` iterations) the optimizer step.

    Works with a DDP model from ``idist.auto_model``: accumulating steps run under
    ``no_sync`` so gradients are all-reduced once per optimizer step. ``amp_mode="amp"``
    uses ``torch.autocast`` (float16 on CUDA, bfloat16 on CPU, or ``amp_dtype``) and
    ``scaler=True`` a ``GradScaler``. The default output is the loss as a detached tensor
    (no host sync per iteration; Ignite returns ``loss.item()``). ``deterministic=True``
    returns a :class:`~distengine.engine.deterministic.DeterministicEngine`.

    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> trainer = create_supervised_trainer(model, opt, torch.nn.functional.mse_loss)
        >>> data = [(torch.randn(8, 4), torch.randn(8, 1))] * 3
        >>> trainer.run(data, max_epochs=2).iteration
        6
    """
    device_type = str(device).split(":")[0] if device is not None else None
    amp_mode, grad_scaler = _check_arg(
        device_type == "xla", device_type == "mps", amp_mode, scaler, device
    )
    step = _training_step(
        model,
        optimizer,
        loss_fn,
        device,
        non_blocking,
        prepare_batch,
        model_transform,
        output_transform,
        gradient_accumulation_steps,
        model_fn,
        _autocast(amp_mode, device, amp_dtype),
        grad_scaler,
    )
    trainer = DeterministicEngine(step) if deterministic else Engine(step)
    if grad_scaler is not None:
        trainer.state.scaler = grad_scaler
    return trainer


def _evaluation_step(
    model: torch.nn.Module,
    device: Any,
    non_blocking: bool,
    prepare_batch: Callable,
    model_transform: Callable,
    output_transform: Callable,
    model_fn: Callable,
    autocast: Callable[[], Any] | None,
) -> Callable[[Engine, Any], Any]:
    @torch.no_grad()
    def evaluate(engine: Engine, batch: Any) -> Any:
        if model.training:
            model.eval()
        x, y = prepare_batch(batch, device=device, non_blocking=non_blocking)
        with autocast() if autocast is not None else contextlib.nullcontext():
            y_pred = model_transform(model_fn(model, x))
        return output_transform(x, y, y_pred)

    return evaluate


def supervised_evaluation_step(
    model: torch.nn.Module,
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    prepare_batch: Callable = prepare_batch,
    model_transform: Callable[[Any], Any] = _identity,
    output_transform: Callable[[Any, Any, Any], Any] = _default_eval_output,
    model_fn: Callable[[torch.nn.Module, Any], Any] = _call_model,
) -> Callable[[Engine, Any], Any]:
    """Builds the process function of a supervised evaluator: the model in eval mode, no grad;
    returns ``(y_pred, y)`` by default.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> ev = Engine(supervised_evaluation_step(model))
        >>> y_pred, y = ev.run([(torch.randn(3, 4), torch.zeros(3))]).output
        >>> tuple(y_pred.shape)
        (3, 2)
    """
    return _evaluation_step(
        model,
        device,
        non_blocking,
        prepare_batch,
        model_transform,
        output_transform,
        model_fn,
        None,
    )


def supervised_evaluation_step_amp(
    model: torch.nn.Module,
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    prepare_batch: Callable = prepare_batch,
    model_transform: Callable[[Any], Any] = _identity,
    output_transform: Callable[[Any, Any, Any], Any] = _default_eval_output,
    model_fn: Callable[[torch.nn.Module, Any], Any] = _call_model,
    amp_dtype: torch.dtype | None = None,
) -> Callable[[Engine, Any], Any]:
    """Builds :func:`supervised_evaluation_step` under ``torch.autocast``.

    Example:
        >>> ev = Engine(supervised_evaluation_step_amp(torch.nn.Linear(4, 2), "cpu"))
        >>> ev.run([(torch.randn(3, 4), torch.zeros(3))]).iteration
        1
    """
    return _evaluation_step(
        model,
        device,
        non_blocking,
        prepare_batch,
        model_transform,
        output_transform,
        model_fn,
        _autocast("amp", device, amp_dtype),
    )


def create_supervised_evaluator(
    model: torch.nn.Module,
    metrics: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    prepare_batch: Callable = prepare_batch,
    model_transform: Callable[[Any], Any] = _identity,
    output_transform: Callable[[Any, Any, Any], Any] = _default_eval_output,
    amp_mode: str | None = None,
    model_fn: Callable[[torch.nn.Module, Any], Any] = _call_model,
    amp_dtype: torch.dtype | None = None,
) -> Engine:
    """Creates an evaluator that runs the model under ``torch.no_grad`` and feeds ``metrics``.

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
    step = _evaluation_step(
        model,
        device,
        non_blocking,
        prepare_batch,
        model_transform,
        output_transform,
        model_fn,
        _autocast(amp_mode, device, amp_dtype),
    )
    evaluator = Engine(step)
    for name, metric in (metrics or {}).items():
        metric.attach(evaluator, name)
    return evaluator
