"""Rank-aware handlers: checkpoints, parameter schedulers, progress, early stopping, timing, time limit, NaN guard, loggers."""

from distengine.handlers.base_logger import BaseLogger, global_step_from_engine
from distengine.handlers.checkpoint import BaseSaveHandler, Checkpoint, ModelCheckpoint
from distengine.handlers.csv_logger import CSVLogger
from distengine.handlers.disk_saver import DiskSaver
from distengine.handlers.early_stopping import EarlyStopping
from distengine.handlers.ema_handler import EMAHandler
from distengine.handlers.param_scheduler import (
    BaseParamScheduler,
    BatchSizeScheduler,
    ConcatScheduler,
    CosineAnnealingScheduler,
    CyclicalScheduler,
    LinearCyclicalScheduler,
    LRScheduler,
    ParamGroupScheduler,
    ParamScheduler,
    PiecewiseLinear,
    ReduceLROnPlateauScheduler,
    create_lr_scheduler_with_warmup,
)
from distengine.handlers.progress import ProgressBar
from distengine.handlers.scalar_logger import (
    GradsScalarHandler,
    OptimizerParamsHandler,
    OutputHandler,
    ScalarLogger,
    WeightsScalarHandler,
)
from distengine.handlers.state_param_scheduler import (
    ExpStateScheduler,
    LambdaStateScheduler,
    MultiStepStateScheduler,
    PiecewiseLinearStateScheduler,
    StateParamScheduler,
    StepStateScheduler,
)
from distengine.handlers.tensorboard_logger import TensorBoardLogger, TensorboardLogger
from distengine.handlers.terminate_on_nan import TerminateOnNan
from distengine.handlers.throughput import ThroughputLogger
from distengine.handlers.time_limit import TimeLimit
from distengine.handlers.timer import Timer

__all__ = [
    "BaseLogger",
    "BaseParamScheduler",
    "BaseSaveHandler",
    "BatchSizeScheduler",
    "CSVLogger",
    "Checkpoint",
    "ConcatScheduler",
    "CosineAnnealingScheduler",
    "CyclicalScheduler",
    "DiskSaver",
    "EMAHandler",
    "EarlyStopping",
    "ExpStateScheduler",
    "GradsScalarHandler",
    "LRScheduler",
    "LambdaStateScheduler",
    "LinearCyclicalScheduler",
    "ModelCheckpoint",
    "MultiStepStateScheduler",
    "OptimizerParamsHandler",
    "OutputHandler",
    "ParamGroupScheduler",
    "ParamScheduler",
    "PiecewiseLinear",
    "PiecewiseLinearStateScheduler",
    "ProgressBar",
    "ReduceLROnPlateauScheduler",
    "ScalarLogger",
    "StateParamScheduler",
    "StepStateScheduler",
    "TensorBoardLogger",
    "TensorboardLogger",
    "TerminateOnNan",
    "ThroughputLogger",
    "TimeLimit",
    "Timer",
    "WeightsScalarHandler",
    "create_lr_scheduler_with_warmup",
    "global_step_from_engine",
]
