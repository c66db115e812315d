"""``create_lr_scheduler_with_warmup``: a linear warm-up, then any scheduler."""

from __future__ import annotations

import numbers
from typing import Any

from torch.optim.lr_scheduler import LRScheduler as TorchLRScheduler

from .base import ParamScheduler
from .composite import ConcatScheduler, ParamGroupScheduler
from .shapes import PiecewiseLinear
from .torch_schedulers import LRScheduler

__all__ = ["create_lr_scheduler_with_warmup"]


def create_lr_scheduler_with_warmup(
    lr_scheduler: ParamScheduler | TorchLRScheduler,
    warmup_start_value: float,
    warmup_duration: int,
    warmup_end_value: float | None = None,
    save_history: bool = False,
    output_simulated_values: list[Any] | None = None,
) -> ConcatScheduler:
    """Creates a linear warm-up of ``warmup_duration`` events, followed by ``lr_scheduler``.

    The warm-up goes from ``warmup_start_value`` to ``warmup_end_value`` (default: each
    group's current learning rate). If ``lr_scheduler`` then starts from another value,
    one more event goes to that value, so the schedule has no jump.

    Args:
        lr_scheduler: a :class:`ParamScheduler` or a ``torch.optim.lr_scheduler`` scheduler.
        warmup_start_value: learning rate at the first event.
        warmup_duration: events of warm-up (>= 2).
        warmup_end_value: learning rate at the end of the warm-up.
        save_history: append values to ``engine.state.param_history``.
        output_simulated_values: a list (e.g. ``[None] * 100``) filled with the simulated
            ``[event, lr]`` of its length.

    Returns:
        A :class:`ConcatScheduler`; attach it to ``ITERATION_STARTED``.

    Raises:
        TypeError: ``lr_scheduler`` of the wrong type, ``warmup_duration`` not an int, or
            ``output_simulated_values`` not a list.
        ValueError: ``warmup_duration`` < 2.

    Example:
        >>> from torch.optim.lr_scheduler import ExponentialLR
        >>> scheduler = create_lr_scheduler_with_warmup(
        ...     ExponentialLR(optimizer, gamma=0.5), warmup_start_value=0.0, warmup_duration=3,
        ...     save_history=True,
        ... )
        >>> scheduler.attach(trainer)  # at every ITERATION_STARTED
        >>> trainer.run(loader, max_epochs=2).param_history["lr"]
        [[0.0], [0.05], [0.1], [0.05], [0.025], [0.0125], [0.00625], [0.003125]]
    """
    if not isinstance(lr_scheduler, (ParamScheduler, TorchLRScheduler)):
        raise TypeError(
            "Argument lr_scheduler should be a subclass of torch.optim.lr_scheduler.LRScheduler or "
            f"ParamScheduler, but given {type(lr_scheduler).__name__}"
        )
    if not isinstance(warmup_duration, numbers.Integral) or isinstance(warmup_duration, bool):
        raise TypeError(
            f"Argument warmup_duration should be integer, but given {warmup_duration!r}"
        )
    if warmup_duration < 2:
        raise ValueError(
            f"Argument warmup_duration should be at least 2 events, but given {warmup_duration}"
        )
    warmups: list[ParamScheduler] = []
    milestones: list[tuple[int, float]] = []
    main: Any = lr_scheduler
    for index, group in enumerate(lr_scheduler.optimizer.param_groups):
        end_value = group["lr"] if warmup_end_value is None else warmup_end_value
        milestones = [(0, warmup_start_value), (warmup_duration - 1, end_value)]
        if isinstance(main, TorchLRScheduler):
            first_lr = group["lr"]
            if first_lr != end_value:
                milestones.append((warmup_duration, first_lr))
            # The torch scheduler steps after its event (ITERATION_COMPLETED style); one step
            # now makes its first value follow the warm-up instead of repeating the last one.
            main.last_epoch += 1
            main = LRScheduler(main, save_history=save_history)
        elif main.get_param() == end_value:
            # The scheduler starts at the warm-up's end: stop one event short of it.
            if warmup_duration > 2:
                step = (end_value - warmup_start_value) / (warmup_duration - 1)
                milestones[-1] = (warmup_duration - 2, end_value - step)
            else:
                milestones.pop(-1)
        warmups.append(
            PiecewiseLinear(
                lr_scheduler.optimizer,
                param_name="lr",
                milestones_values=milestones,
                param_group_index=index,
                save_history=save_history,
            )
        )
    warmup = ParamGroupScheduler(warmups, save_history=save_history)
    schedulers: list[Any] = [warmup, main]
    durations = [milestones[-1][0] + 1]
    combined = ConcatScheduler(schedulers, durations=durations, save_history=save_history)
    if output_simulated_values is not None:
        if not isinstance(output_simulated_values, list):
            raise TypeError(
                "Argument output_simulated_values should be a list of None, e.g. `[None] * 100`, "
                f"but given {type(output_simulated_values).__name__}"
            )
        simulated = ConcatScheduler.simulate_values(
            num_events=len(output_simulated_values), schedulers=schedulers, durations=durations
        )
        output_simulated_values[:] = simulated
    return combined
