"""Parameter schedulers: learning rate (and any optimizer or engine value) per event, resumable.

Every scheduler has ``state_dict``/``load_state_dict``; put it in ``Checkpoint``'s
``to_save`` next to the optimizer and the trainer, and a resumed run continues the
schedule at the exact event where it stopped.

Example:
    >>> from distengine.handlers import PiecewiseLinear
    >>> scheduler = PiecewiseLinear(optimizer, "lr", [(0, 0.0), (2, 0.1), (4, 0.0)])
    >>> scheduler.attach(trainer)  # sets the lr at every ITERATION_STARTED
    >>> to_save = {"trainer": trainer, "model": model, "optimizer": optimizer, "lr": scheduler}
    >>> state = trainer.run(loader, max_epochs=1)
    >>> scheduler.state_dict()["event_index"]  # saved with the rest: a resume continues here
    4
"""

from .base import BaseParamScheduler, ParamScheduler
from .batch_size import BatchSizeScheduler
from .composite import ConcatScheduler, ParamGroupScheduler
from .shapes import (
    CosineAnnealingScheduler,
    CyclicalScheduler,
    LinearCyclicalScheduler,
    PiecewiseLinear,
)
from .torch_schedulers import LRScheduler, ReduceLROnPlateauScheduler
from .warmup import create_lr_scheduler_with_warmup

__all__ = [
    "BaseParamScheduler",
    "BatchSizeScheduler",
    "ConcatScheduler",
    "CosineAnnealingScheduler",
    "CyclicalScheduler",
    "LRScheduler",
    "LinearCyclicalScheduler",
    "ParamGroupScheduler",
    "ParamScheduler",
    "PiecewiseLinear",
    "ReduceLROnPlateauScheduler",
    "create_lr_scheduler_with_warmup",
]
