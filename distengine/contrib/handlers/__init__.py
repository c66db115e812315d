"""Handlers at Ignite's ``contrib.handlers`` path (moved to :mod:`distengine.handlers`).

The names Ignite 0.5.5 still offers here and distengine provides: ``ProgressBar``,
``TensorboardLogger``, the parameter schedulers and ``global_step_from_engine``; and the
submodules ``tensorboard_logger``, ``tqdm_logger``, ``param_scheduler`` and
``base_logger`` (each warns that it moved, as Ignite's do).

Example:
    >>> from distengine.contrib.handlers import ProgressBar, TensorboardLogger
"""

from distengine.handlers import (
    ConcatScheduler,
    CosineAnnealingScheduler,
    LinearCyclicalScheduler,
    LRScheduler,
    ParamGroupScheduler,
    PiecewiseLinear,
    ProgressBar,
    TensorboardLogger,
    create_lr_scheduler_with_warmup,
    global_step_from_engine,
)

__all__ = [
    "ConcatScheduler",
    "CosineAnnealingScheduler",
    "LRScheduler",
    "LinearCyclicalScheduler",
    "ParamGroupScheduler",
    "PiecewiseLinear",
    "ProgressBar",
    "TensorboardLogger",
    "create_lr_scheduler_with_warmup",
    "global_step_from_engine",
]
