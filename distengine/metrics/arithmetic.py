"""Operators on metrics: arithmetic, indexing and method calls build a ``MetricsLambda``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from distengine.metrics.metrics_lambda import MetricsLambda

__all__ = ["LambdaOperators"]


class LambdaOperators:
    """Mixin of :class:`~distengine.metrics.Metric`: ``m1 + m2``, ``m[0]``, ``m.mean()`` ...

    Each returns a :class:`~distengine.metrics.MetricsLambda` computing the operation on the
    metrics' values. ``metric.name(...)`` for a public ``name`` the metric lacks calls that
    method on the value (``cm.diag().sum()``); private names raise ``AttributeError``.

    Example:
        >>> from distengine.metrics import Precision, Recall
        >>> p, r = Precision(average=False), Recall(average=False)
        >>> f1 = (p * r * 2 / (p + r + 1e-20)).mean()
    """

    # The class these operators build. MetricsLambda is a Metric, and Metric inherits these
    # operators, so this module cannot import it: MetricsLambda declares itself instead
    # (``class MetricsLambda(Metric, builds_lambdas=True)``) when its module is imported,
    # which ``distengine.metrics`` does.
    _lambda_class: ClassVar[type | None] = None

    def __init_subclass__(cls, builds_lambdas: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if builds_lambdas:
            LambdaOperators._lambda_class = cls

    def _lambda(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> MetricsLambda:
        built = LambdaOperators._lambda_class
        if built is None:  # only if distengine.metrics.metrics_lambda was never imported
            raise RuntimeError("import distengine.metrics before combining metrics")
        return built(fn, *args, **kwargs)

    def __add__(self, other: Any) -> MetricsLambda:
        return self._lambda(lambda x, y: x + y, self, other)

    def __radd__(self, other: Any) -> MetricsLambda:
        return self._lambda(lambda x, y: x + y, other, self)

    def __sub__(self, other: Any) -> MetricsLambda:
        return self._lambda(lambda x, y: x - y, self, other)

    def __rsub__(self, other: Any) -> MetricsLambda:
        return self._lambda(lambda x, y: x - y, other, self)

    def __mul__(self, other: Any) -> MetricsLambda:
        return self._lambda(lambda x, y: x * y, self, other)

    def __rmul__(self, other: Any) -> MetricsLambda:
        return self._lambda(lambda x, y: x * y, other, self)

    def __pow__(self, other: Any) -> MetricsLambda:
        return self._lambda(lambda x, y: x**y, self, other)

    def __rpow__(self, other: Any) -> MetricsLambda:
        return self._lambda(lambda x, y: x**y, other, self)

    def __mod__(self, other: Any) -> MetricsLambda:
        return self._lambda(lambda x, y: x % y, self, other)

    def __truediv__(self, other: Any) -> MetricsLambda:
        return self._lambda(lambda x, y: x.__truediv__(y), self, other)

    def __rtruediv__(self, other: Any) -> MetricsLambda:
        return self._lambda(lambda x, y: x.__truediv__(y), other, self)

    def __floordiv__(self, other: Any) -> MetricsLambda:
        return self._lambda(lambda x, y: x // y, self, other)

    def __getitem__(self, index: Any) -> MetricsLambda:
        return self._lambda(lambda x: x[index], self)

    def __getattr__(self, attr: str) -> Callable[..., MetricsLambda]:
        # Public names only: ``metric.mean()`` -> a lambda calling ``.mean()`` on the value.
        # Private and dunder names raise as usual (internals probe them with getattr).
        if attr.startswith("_"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")

        def call(value: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                method = getattr(value, attr)
            except AttributeError:
                raise AttributeError(
                    f"The value of {type(self).__name__} (a {type(value).__name__}) has no "
                    f"attribute {attr!r}"
                ) from None
            return method(*args, **kwargs)

        def build(*args: Any, **kwargs: Any) -> MetricsLambda:
            return self._lambda(call, self, *args, **kwargs)

        return build
