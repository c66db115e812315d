"""Moved to :mod:`distengine.handlers.progress` (Ignite's old import path)."""

from distengine.contrib.handlers._moved import warn_moved
from distengine.handlers.progress import ProgressBar

warn_moved(__name__, "distengine.handlers (ProgressBar)")

__all__ = ["ProgressBar"]
