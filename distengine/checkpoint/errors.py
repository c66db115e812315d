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
        >>> raise CheckpointIntegrityError("/ckpt/a.pt: SHA-256 mismatch")
        Traceback (most recent call last):
        distengine.checkpoint.errors.CheckpointIntegrityError: /ckpt/a.pt: SHA-256 mismatch
    """


class CheckpointSaveError(CheckpointError):
    """A save failed; raised on every rank with the writer's reason.

    Example:
        >>> try:
        ...     raise CheckpointSaveError("save of 'checkpoint_10.pt' failed on rank 0: disk full")
        ... except CheckpointError as error:  # the base class of every checkpoint error
        ...     print(error)
        save of 'checkpoint_10.pt' failed on rank 0: disk full
    """


class CheckpointConflictError(CheckpointSaveError):
    """Another live writer saves the same checkpoint names into the same directory.

    Raised (on every rank) before anything is written, naming the directory and the
    other run.

    Example:
        >>> raise CheckpointConflictError("/ckpt: run 3f0c is also saving here")
        Traceback (most recent call last):
        distengine.checkpoint.errors.CheckpointConflictError: /ckpt: run 3f0c is also saving here
    """


class CheckpointTimeoutError(CheckpointError, TimeoutError):
    """A storage call did not finish (or make progress) within the I/O timeout.

    Example:
        >>> issubclass(CheckpointTimeoutError, TimeoutError)  # caught by ``except TimeoutError``
        True
    """
