"""Moved to :mod:`distengine.handlers.base_logger` (Ignite's old import path)."""

from distengine.contrib.handlers._moved import warn_moved
from distengine.handlers.base_logger import (
    BaseHandler,
    BaseLogger,
    BaseOptimizerParamsHandler,
    BaseOutputHandler,
    BaseWeightsHandler,
    BaseWeightsScalarHandler,
)

warn_moved(__name__, "distengine.handlers.base_logger")

__all__ = [
    "BaseHandler",
    "BaseLogger",
    "BaseOptimizerParamsHandler",
    "BaseOutputHandler",
    "BaseWeightsHandler",
    "BaseWeightsScalarHandler",
]
