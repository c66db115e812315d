"""Metrics whose state is kept as sums and counts, reduced across ranks in one collective.

Example:
    >>> from distengine.metrics import Accuracy, Loss
    >>> Accuracy().attach(evaluator, "accuracy")  # doctest: +SKIP
"""

from distengine.metrics.accuracy import Accuracy
from distengine.metrics.average import Average
from distengine.metrics.loss import Loss
from distengine.metrics.metric import Metric, NotComputableError
from distengine.metrics.running_average import RunningAverage

__all__ = ["Metric", "NotComputableError", "Accuracy", "Loss", "Average", "RunningAverage"]
