"""Rank-aware handlers: checkpoints, progress, early stopping, timing, NaN guard, loggers."""

from distengine.handlers.base_logger import BaseLogger, global_step_from_engine
from distengine.handlers.checkpoint import BaseSaveHandler, Checkpoint, ModelCheckpoint
from distengine.handlers.csv_logger import CSVLogger
from distengine.handlers.disk_saver import DiskSaver
from distengine.handlers.early_stopping import EarlyStopping
from distengine.handlers.progress import ProgressBar
from distengine.handlers.tensorboard_logger import TensorBoardLogger
from distengine.handlers.terminate_on_nan import TerminateOnNan
from distengine.handlers.throughput import ThroughputLogger
from distengine.handlers.timer import Timer

__all__ = [
    "BaseLogger",
    "BaseSaveHandler",
    "CSVLogger",
    "Checkpoint",
    "DiskSaver",
    "EarlyStopping",
    "ModelCheckpoint",
    "ProgressBar",
    "TensorBoardLogger",
    "TerminateOnNan",
    "ThroughputLogger",
    "Timer",
    "global_step_from_engine",
]
