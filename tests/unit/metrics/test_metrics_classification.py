"""Precision, Recall, Fbeta, ConfusionMatrix (+ helpers), TopK, MSE/MAE/RMSE on one process.

Each is checked against a direct computation and against pytorch-ignite 0.5.5 (the test
oracle) on the same batches; bad inputs raise clear errors.
"""

from __future__ import annotations

import warnings

import ignite.metrics as im
import ignite.metrics.confusion_matrix as icm
import pytest
import torch

import distengine.exceptions
from distengine.metrics import (
    ConfusionMatrix,
    DiceCoefficient,
    Fbeta,
    IoU,
    JaccardIndex,
    MeanAbsoluteError,
    MeanSquaredError,
    NotComputableError,
    Precision,
    Recall,
    RootMeanSquaredError,
    TopKCategoricalAccuracy,
    cmAccuracy,
    cmPrecision,
    cmRecall,
    mIoU,
)
from distengine.metrics.confusion_matrix import ConfusionMatrix as CMFromModule


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _batches(kind, n=3, size=7, classes=4, seed=0):
    g = _g(seed)
    out = []
    for _ in range(n):
        if kind == "binary":
            out.append(
                (
                    torch.randint(0, 2, (size,), generator=g),
                    torch.randint(0, 2, (size,), generator=g),
                )
            )
        elif kind == "multiclass":
            out.append(
                (
                    torch.randn(size, classes, generator=g),
                    torch.randint(0, classes, (size,), generator=g),
                )
            )
        elif kind == "segmentation":
            out.append(
                (
                    torch.randn(size, classes, 3, 2, generator=g),
                    torch.randint(0, classes, (size, 3, 2), generator=g),
                )
            )
        else:  # multilabel
            out.append(
                (
                    torch.randint(0, 2, (size, classes), generator=g),
                    torch.randint(0, 2, (size, classes), generator=g),
                )
            )
    return out


def _run(metric, batches):
    metric.reset()
    for b in batches:
        metric.update(b)
    return metric.compute()


def _same(ours, theirs):
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, torch.Tensor)
        assert ours.shape == theirs.shape
        assert torch.allclose(ours.double(), theirs.double(), atol=1e-12)
    else:
        assert ours == pytest.approx(theirs, abs=1e-12)


CASES = [
    ("binary", False, False),
    ("binary", None, False),
    ("binary", "macro", False),
    ("binary", "weighted", False),
    ("multiclass", False, False),
    ("multiclass", None, False),
    ("multiclass", "micro", False),
    ("multiclass", "macro", False),
    ("multiclass", "weighted", False),
    ("multiclass", True, False),
    ("multilabel", False, True),
    ("multilabel", "micro", True),
    ("multilabel", "macro", True),
    ("multilabel", "weighted", True),
    ("multilabel", "samples", True),
]


@pytest.mark.parametrize("cls_name", ["Precision", "Recall"])
@pytest.mark.parametrize(("kind", "average", "multilabel"), CASES)
def test_precision_recall_agree_with_ignite(cls_name, kind, average, multilabel):
    batches = _batches(kind)
    ours = {"Precision": Precision, "Recall": Recall}[cls_name](
        average=average, is_multilabel=multilabel
    )
    theirs = getattr(im, cls_name)(average=average, is_multilabel=multilabel)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # binary ints with average: fine here
        _same(_run(ours, batches), _run(theirs, batches))


def test_precision_recall_per_class_against_direct_counts():
    batches = _batches("multiclass", n=4, size=9, classes=3, seed=3)
    y_pred = torch.cat([b[0] for b in batches]).argmax(dim=1)
    y = torch.cat([b[1] for b in batches])
    p, r = Precision(average=None), Recall(average=None)
    for b in batches:
        p.update(b)
        r.update(b)
    for c in range(3):
        tp = ((y_pred == c) & (y == c)).sum().item()
        assert p.compute()[c].item() == pytest.approx(tp / max((y_pred == c).sum().item(), 1e-20))
        assert r.compute()[c].item() == pytest.approx(tp / (y == c).sum().item())
    assert p.compute().dtype == torch.float64


def test_precision_binary_average_false_is_a_number_in_state_metrics():
    from distengine.engine import Engine

    engine = Engine(lambda e, b: b)
    Precision().attach(engine, "p")
    state = engine.run([(torch.tensor([1, 0, 1, 1]), torch.tensor([1, 0, 0, 1]))], max_epochs=1)
    assert state.metrics["p"] == pytest.approx(2 / 3)


def test_zero_row_update_shapes_the_state_but_counts_nothing():
    p = Precision(average=False)
    p.update((torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)))
    assert p.rank_state_dict()["_numerator"].shape == (3,)  # shaped by the 3 columns
    with pytest.raises(NotComputableError, match="at least one example"):
        p.compute()
    p.update((torch.tensor([[0.1, 0.9, 0.0]]), torch.tensor([1])))
    assert p.compute().tolist() == pytest.approx([0.0, 1.0, 0.0])


def test_fbeta_agrees_with_ignite_and_formula():
    batches = _batches("multiclass", n=3)
    for beta, average in ((1.0, True), (0.5, False), (2.0, True)):
        ours, theirs = Fbeta(beta, average=average), im.Fbeta(beta, average=average)
        _same(_run(ours, batches), _run(theirs, batches))
    p, r = Precision(average=False), Recall(average=False)
    f = Fbeta(2.0, average=False, precision=p, recall=r)
    value = _run(f, batches)
    pv, rv = p.compute(), r.compute()
    assert torch.allclose(value, 5 * pv * rv / (4 * pv + rv + 1e-15))


def test_fbeta_rejects_bad_arguments():
    with pytest.raises(ValueError, match="beta must be a positive number"):
        Fbeta(0.0)
    with pytest.raises(ValueError, match="must have average=False"):
        Fbeta(1.0, precision=Precision(average=True))
    with pytest.raises(ValueError, match="output_transform and device must be None"):
        Fbeta(1.0, recall=Recall(), output_transform=lambda x: x)
    with pytest.raises(TypeError, match="precision must be a Precision"):
        Fbeta(1.0, precision=Recall())


@pytest.mark.parametrize("average", [None, "samples", "recall", "precision"])
@pytest.mark.parametrize("kind", ["multiclass", "segmentation"])
def test_confusion_matrix_agrees_with_ignite(kind, average):
    batches = _batches(kind)
    _same(
        _run(ConfusionMatrix(4, average=average), batches),
        _run(im.ConfusionMatrix(4, average=average), batches),
    )


def test_confusion_matrix_counts_and_ignored_targets():
    cm = CMFromModule(num_classes=3)
    y_pred = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0]])
    cm.update((y_pred, torch.tensor([0, 2, 2, -1])))  # -1: ignored (e.g. a void label)
    assert cm.compute().tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 1]]
    assert cm.compute().dtype == torch.int64


@pytest.mark.parametrize("ignore_index", [None, 0, 2])
def test_confusion_matrix_helpers_agree_with_ignite(ignore_index):
    batches = _batches("segmentation", seed=5)
    ours, theirs = ConfusionMatrix(4), im.ConfusionMatrix(4)
    pairs = [
        (IoU(ours, ignore_index), im.IoU(theirs, ignore_index)),
        (mIoU(ours, ignore_index), im.mIoU(theirs, ignore_index)),
        (JaccardIndex(ours, ignore_index), im.JaccardIndex(theirs, ignore_index)),
        (DiceCoefficient(ours, ignore_index), icm.DiceCoefficient(theirs, ignore_index)),
        (cmAccuracy(ours), icm.cmAccuracy(theirs)),
        (cmPrecision(ours, average=False), icm.cmPrecision(theirs, average=False)),
        (cmRecall(ours), icm.cmRecall(theirs)),
    ]
    for b in batches:
        ours.update(b)
        theirs.update(b)
    for mine, reference in pairs:
        _same(mine.compute(), reference.compute())


def test_confusion_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="num_classes must be an int > 1, got 1"):
        ConfusionMatrix(1)
    with pytest.raises(ValueError, match="average must be None or one of"):
        ConfusionMatrix(3, average="macro")
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="y_pred has 4 classes"):
        cm.update((torch.rand(2, 4), torch.tensor([0, 1])))
    with pytest.raises(ValueError, match=r"y \(batch_size, \.\.\.\)"):
        cm.update((torch.rand(2, 3), torch.tensor([[0], [1]])))
    with pytest.raises(NotComputableError):
        cm.compute()
    with pytest.raises(TypeError, match="cm must be a ConfusionMatrix"):
        IoU(Precision())
    with pytest.raises(ValueError, match=r"ignore_index must be an int in \[0, 3\)"):
        mIoU(cm, ignore_index=3)
    with pytest.raises(ValueError, match="average None or 'samples'"):
        IoU(ConfusionMatrix(3, average="recall"))


def test_top_k_against_direct_count_and_ignite():
    batches = _batches("multiclass", n=3, classes=5)
    for k in (1, 2, 5):
        ours = _run(TopKCategoricalAccuracy(k=k), batches)
        assert ours == _run(im.TopKCategoricalAccuracy(k=k), batches)
        y_pred = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        hits = (y_pred.topk(k, dim=1).indices == y[:, None]).any(dim=1).sum().item()
        assert ours == hits / len(y)
    with pytest.raises(ValueError, match="k must be a positive int"):
        TopKCategoricalAccuracy(k=0)
    with pytest.raises(ValueError, match="larger than the 3 classes"):
        TopKCategoricalAccuracy(k=5).update((torch.rand(2, 3), torch.tensor([0, 1])))


@pytest.mark.parametrize("shape", [(7,), (7, 3)])
def test_regression_errors_against_direct_computation(shape):
    g = _g(4)
    batches = [
        (torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)) for _ in range(3)
    ]
    err = torch.cat([(p - t).double() for p, t in batches])
    n = 3 * shape[0]
    mse = _run(MeanSquaredError(), batches)
    assert mse == pytest.approx((err**2).sum().item() / n, rel=1e-6)
    assert _run(MeanAbsoluteError(), batches) == pytest.approx(err.abs().sum().item() / n, rel=1e-6)
    assert _run(RootMeanSquaredError(), batches) == pytest.approx(mse**0.5, rel=1e-12)
    assert mse == pytest.approx(_run(im.MeanSquaredError(), batches), rel=1e-6)
    assert MeanSquaredError()._state_dict_all_req_keys == (
        "_sum_of_squared_errors",
        "_num_examples",
    )


def test_regression_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="same number of elements"):
        MeanSquaredError().update((torch.rand(3), torch.rand(4)))
    with pytest.raises(TypeError, match=r"expects \(y_pred, y\)"):
        MeanAbsoluteError().update(torch.rand(3))


@pytest.mark.parametrize(
    "metric",
    [
        Precision(),
        Recall(average="macro"),
        ConfusionMatrix(3),
        TopKCategoricalAccuracy(),
        MeanSquaredError(),
        MeanAbsoluteError(),
        RootMeanSquaredError(),
    ],
    ids=lambda m: type(m).__name__,
)
def test_not_computable_before_any_example(metric):
    assert NotComputableError is distengine.exceptions.NotComputableError
    with pytest.raises(distengine.exceptions.NotComputableError, match="at least one"):
        metric.compute()


def test_precision_rejects_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="average must be None, a bool or one of"):
        Precision(average="median")
    p = Precision(average="samples")
    with pytest.raises(ValueError, match="'samples' is incompatible with binary and multiclass"):
        p.update((torch.rand(3, 4), torch.tensor([0, 1, 2])))
    p = Precision()
    with pytest.raises(ValueError, match="y holds class 5"):
        p.update((torch.rand(3, 4), torch.tensor([0, 1, 5])))
    p = Precision()
    p.update((torch.rand(3, 4), torch.tensor([0, 1, 2])))
    with pytest.raises(ValueError, match="changed from multiclass to binary") as info:
        p.update((torch.tensor([1, 0]), torch.tensor([1, 1])))
    assert isinstance(info.value, RuntimeError)  # what Ignite raises there, too
    with pytest.warns(RuntimeWarning, match="dtype long"):
        Precision().update((torch.rand(3, 4), torch.tensor([0.0, 1.0, 2.0])))
