"""Exceptions that are part of the public API (Ignite's ``ignite.exceptions``).

Example:
    >>> from distengine.exceptions import NotComputableError
    >>> issubclass(NotComputableError, RuntimeError)
    True
"""

from __future__ import annotations

__all__ = ["NotComputableError"]


class NotComputableError(RuntimeError):
    """Raised by a metric's ``compute()`` when it cannot be computed yet (no example seen).

    Example:
        >>> from distengine.metrics import Accuracy
        >>> try:
        ...     Accuracy().compute()
        ... except NotComputableError:
        ...     print("not computable")
        not computable
    """
