"""Metrics whose state is kept as sums and counts, reduced across ranks in one collective.

Example:
    >>> from distengine.metrics import Accuracy, Loss
    >>> Accuracy().attach(evaluator, "accuracy")
    >>> Loss(torch.nn.functional.cross_entropy).attach(evaluator, "loss")
    >>> metrics = evaluator.run(loader).metrics  # the same values on every rank
    >>> sorted(metrics)
    ['accuracy', 'loss']
"""

from distengine.exceptions import NotComputableError
from distengine.metrics.accuracy import Accuracy
from distengine.metrics.average import Average
from distengine.metrics.confusion_matrix import (
    ConfusionMatrix,
    DiceCoefficient,
    IoU,
    JaccardIndex,
    cmAccuracy,
    cmPrecision,
    cmRecall,
    mIoU,
)
from distengine.metrics.fbeta import Fbeta
from distengine.metrics.loss import Loss
from distengine.metrics.metric import Metric, reinit__is_reduced, sync_all_reduce
from distengine.metrics.metrics_lambda import MetricsLambda
from distengine.metrics.precision import Precision
from distengine.metrics.recall import Recall
from distengine.metrics.regression import (
    MeanAbsoluteError,
    MeanSquaredError,
    RootMeanSquaredError,
)
from distengine.metrics.running_average import RunningAverage
from distengine.metrics.top_k_categorical_accuracy import TopKCategoricalAccuracy
from distengine.metrics.torch_metric import TorchMetric
from distengine.metrics.usage import (
    BatchFiltered,
    BatchWise,
    EpochWise,
    MetricUsage,
    RunningBatchWise,
    RunningEpochWise,
    SingleEpochRunningBatchWise,
)

__all__ = [
    "Metric",
    "NotComputableError",
    "MetricsLambda",
    "MetricUsage",
    "EpochWise",
    "BatchWise",
    "BatchFiltered",
    "RunningEpochWise",
    "RunningBatchWise",
    "SingleEpochRunningBatchWise",
    "sync_all_reduce",
    "reinit__is_reduced",
    "Accuracy",
    "Loss",
    "Average",
    "RunningAverage",
    "Precision",
    "Recall",
    "Fbeta",
    "ConfusionMatrix",
    "IoU",
    "mIoU",
    "JaccardIndex",
    "DiceCoefficient",
    "cmAccuracy",
    "cmPrecision",
    "cmRecall",
    "TopKCategoricalAccuracy",
    "MeanSquaredError",
    "MeanAbsoluteError",
    "RootMeanSquaredError",
    "TorchMetric",
]
