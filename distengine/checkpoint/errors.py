"""Errors raised by checkpoint storage, saving and loading."""

from __future__ import annotations

__all__ = ["CheckpointError", "CheckpointIntegrityError", "CheckpointSaveError"]


class CheckpointError(RuntimeError):
    """Base class of the checkpoint errors below."""


class CheckpointIntegrityError(CheckpointError):
    """A checkpoint file does not match its manifest (size or SHA-256), or is unreadable.

    Example:
        >>> raise CheckpointIntegrityError("/ckpt/a.pt: SHA-256 mismatch ...")  # doctest: +SKIP
    """


class CheckpointSaveError(CheckpointError):
    """A save failed; raised on every rank with the writer's reason.

    Example:
        >>> raise CheckpointSaveError("save of 'checkpoint_10.pt' failed on rank 0: ...")  # doctest: +SKIP
    """
