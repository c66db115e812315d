"""Moved to :mod:`distengine.handlers.tensorboard_logger` (Ignite's old import path)."""

from distengine.contrib.handlers._moved import warn_moved
from distengine.handlers.base_logger import global_step_from_engine
from distengine.handlers.tensorboard_logger import (
    GradsScalarHandler,
    OptimizerParamsHandler,
    OutputHandler,
    TensorBoardLogger,
    TensorboardLogger,
    WeightsScalarHandler,
)

warn_moved(__name__, "distengine.handlers.tensorboard_logger")

__all__ = [
    "GradsScalarHandler",
    "OptimizerParamsHandler",
    "OutputHandler",
    "TensorBoardLogger",
    "TensorboardLogger",
    "WeightsScalarHandler",
    "global_step_from_engine",
]
