"""Ignite's save-handler protocol: where a ``Checkpoint`` puts what it saves.

A save handler is called as ``handler(checkpoint, filename, metadata)`` on the writing
rank and may implement ``remove(filename)``, which ``Checkpoint`` calls for the
checkpoints that retention drops. ``metadata`` holds Ignite's keys: ``basename``,
``score_name`` and ``priority``.

A save handler that also has a ``checkpoint_writer`` attribute (a
:class:`~distengine.checkpoint.writer.DirectoryWriter`), as ``DiskSaver`` does, is written
through it instead: with manifests, run identity, crash-safe names and retention that
survives restarts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

__all__ = ["BaseSaveHandler"]


class BaseSaveHandler(ABC):
    """Base class of save handlers (Ignite's ``BaseSaveHandler``).

    Example:
        >>> class Recorder(BaseSaveHandler):
        ...     def __init__(self):
        ...         self.files = {}
        ...     def __call__(self, checkpoint, filename, metadata=None):
        ...         self.files[filename] = checkpoint
        ...     def remove(self, filename):
        ...         del self.files[filename]
    """

    @abstractmethod
    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        """Saves ``checkpoint`` as ``filename``; ``metadata`` has ``basename``,
        ``score_name`` and ``priority``."""

    @abstractmethod
    def remove(self, filename: str) -> None:
        """Deletes the checkpoint saved as ``filename``."""
