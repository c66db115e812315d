"""Errors raised by checkpoint storage, saving and loading."""

from __future__ import annotations

__all__ = [
    "CheckpointConflictError",
    "CheckpointError",
    "CheckpointIntegrityError",
    "CheckpointSaveError",
    "CheckpointTimeoutError",
]


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


class CheckpointConflictError(CheckpointSaveError):
    """Another live writer saves the same checkpoint names into the same directory.

    Raised (on every rank) before anything is written, naming the directory and the
    other run.

    Example:
        >>> raise CheckpointConflictError("/ckpt: run 3f... is also saving here")  # doctest: +SKIP
    """


class CheckpointTimeoutError(CheckpointError, TimeoutError):
    """A storage call did not finish (or make progress) within the I/O timeout.

    Example:
        >>> raise CheckpointTimeoutError("writing s3://b/c_1.pt: no progress for 120 s")  # doctest: +SKIP
    """
