"""Every Ignite-style metric and torchmetrics through ``TorchMetric`` exact at 1, 2 and 3 ranks.

One data set of 19 samples (divisible by neither 2 nor 3), global batch 6, evaluation
loaders from ``idist.auto_dataloader(..., shuffle=False)``: at 2 and 3 ranks the last
global batch is padded and some rank's last batch is padding only (the zero-row update
path). Two evaluators per job:

- ``plain``: Precision / Recall (per class, macro, weighted, micro), Fbeta, ConfusionMatrix
  with mIoU / cmAccuracy / IoU, TopK, MSE / MAE / RMSE, Accuracy, a MetricsLambda, and two
  torchmetrics metrics with fixed-shape states (F1Score, MeanSquaredError): exactly **one**
  collective at ``EPOCH_COMPLETED``;
- ``cat``: a torchmetrics metric with ``"cat"`` states (AUROC without thresholds) next to
  Precision: one gather of lengths, then one gather of everything.

Each rank counts ``idist.all_gather`` calls and every ``torch.distributed`` collective
(so an ``all_gather`` of torchmetrics' own would show) inside the completion handlers; the
test process compares every value with a direct computation on the whole data set.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torchmetrics  # a test dependency (requirements-ci.txt)

import distengine.distributed as idist
from distengine.engine import Engine, Events
from distengine.metrics import (
    Accuracy,
    BatchFiltered,
    ConfusionMatrix,
    Fbeta,
    IoU,
    MeanAbsoluteError,
    MeanSquaredError,
    Metric,
    Precision,
    Recall,
    RootMeanSquaredError,
    RunningAverage,
    RunningEpochWise,
    TopKCategoricalAccuracy,
    TorchMetric,
    cmAccuracy,
    mIoU,
    sync_all_reduce,
)

N, C, GLOBAL_BATCH = 19, 4, 6


def _data() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(N, C, generator=g)
    targets = torch.randint(0, C, (N,), generator=g)
    targets[:C] = torch.arange(C)  # every class present
    reg_pred = torch.randn(N, generator=g)
    reg_true = torch.randn(N, generator=g)
    return torch.utils.data.TensorDataset(logits, targets, reg_pred, reg_true)


def _cls(o):
    return o["logits"], o["y"]


def _reg(o):
    return o["p"], o["t"]


class MaxAbsError(Metric):
    """Written the Ignite way: @sync_all_reduce on compute declares the reductions."""

    def reset(self):
        self._max, self._n = 0.0, 0

    def update(self, output):
        p, t = output
        self._max = max(self._max, float((p - t).abs().max()))
        self._n += len(t)

    @sync_all_reduce("_max:MAX", "_n")
    def compute(self):
        return (self._max, self._n)


def _plain_metrics() -> dict:
    precision = Precision(average=False, output_transform=_cls)
    recall = Recall(average=False, output_transform=_cls)
    cm = ConfusionMatrix(num_classes=C, output_transform=_cls)
    return {
        "precision": precision,
        "recall": recall,
        "precision_macro": Precision(average="macro", output_transform=_cls),
        "recall_weighted": Recall(average="weighted", output_transform=_cls),
        "precision_micro": Precision(average="micro", output_transform=_cls),
        "f1": Fbeta(1.0, output_transform=_cls),
        "f2_per_class": Fbeta(2.0, average=False, precision=precision, recall=recall),
        "cm": cm,
        "miou": mIoU(cm),
        "iou": IoU(cm),
        "cm_acc": cmAccuracy(cm),
        "top2": TopKCategoricalAccuracy(k=2, output_transform=_cls),
        "acc": Accuracy(output_transform=_cls),
        "mse": MeanSquaredError(output_transform=_reg),
        "mae": MeanAbsoluteError(output_transform=_reg),
        "rmse": RootMeanSquaredError(output_transform=_reg),
        "p_minus_r": (precision - recall).abs().max(),
        "tm_f1": TorchMetric(
            torchmetrics.F1Score(task="multiclass", num_classes=C, average="macro"),
            output_transform=_cls,
        ),
        "tm_mse": TorchMetric(torchmetrics.MeanSquaredError(), output_transform=_reg),
        "max_err": MaxAbsError(output_transform=_reg),
        # (metric, usage): the src's epoch value, reduced, folded in at EPOCH_COMPLETED
        "ra_epoch": (RunningAverage(Accuracy(output_transform=_cls)), RunningEpochWise()),
        # updated on iterations 2 and 4 only (global batches 1 and 3)
        "acc_every2": (Accuracy(output_transform=_cls), BatchFiltered(every=2)),
    }


def _cat_metrics() -> dict:
    return {
        "tm_auroc": TorchMetric(
            torchmetrics.AUROC(task="multiclass", num_classes=C, thresholds=None),
            output_transform=_cls,
        ),
        "precision": Precision(average=False, output_transform=_cls),
    }


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def _evaluate(metrics: dict, counters: dict) -> tuple[dict, dict]:
    """Runs one evaluation; returns the metrics and the collectives per completion event."""
    seen = {"iteration": [], "epoch": []}
    mark = {}

    def step(engine, batch):
        logits, y, p, t = batch
        return {"logits": logits, "y": y, "p": p, "t": t}

    ev = Engine(step)
    for event in (Events.ITERATION_COMPLETED, Events.EPOCH_COMPLETED):
        ev.add_event_handler(event, lambda e, ev_=event: mark.__setitem__(ev_, dict(counters)))
    for name, metric in metrics.items():
        if isinstance(metric, tuple):
            metric[0].attach(ev, name, usage=metric[1])
        else:
            metric.attach(ev, name)

    def after(kind, event):
        def handler(e):
            seen[kind].append({k: counters[k] - mark[event][k] for k in counters})

        return handler

    ev.add_event_handler(Events.ITERATION_COMPLETED, after("iteration", Events.ITERATION_COMPLETED))
    ev.add_event_handler(Events.EPOCH_COMPLETED, after("epoch", Events.EPOCH_COMPLETED))
    loader = idist.auto_dataloader(_data(), batch_size=GLOBAL_BATCH, shuffle=False)
    state = ev.run(loader, max_epochs=1)
    return {k: _jsonable(state.metrics[k]) for k in metrics}, seen


def _job(local_rank: int, out_dir: str) -> None:
    import torch.distributed as dist

    counters = {"idist_all_gather": 0, "dist_collectives": 0}
    originals = {}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            counters[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    originals["idist"] = idist.all_gather
    idist.all_gather = counting("idist_all_gather", idist.all_gather)
    names = ("all_gather", "all_gather_object", "all_reduce", "broadcast", "all_gather_into_tensor")
    for n in names:
        originals[n] = getattr(dist, n)
        setattr(dist, n, counting("dist_collectives", originals[n]))
    try:
        plain, plain_seen = _evaluate(_plain_metrics(), counters)
        cat, cat_seen = _evaluate(_cat_metrics(), counters)
    finally:
        idist.all_gather = originals["idist"]
        for n in names:
            setattr(dist, n, originals[n])
    record = {
        "world_size": idist.get_world_size(),
        "plain": plain,
        "plain_seen": plain_seen,
        "cat": cat,
        "cat_seen": cat_seen,
    }
    with open(os.path.join(out_dir, f"rank{idist.get_rank()}.json"), "w") as f:
        json.dump(record, f)


def _reference() -> dict:
    """Direct computations on the whole data set (one process, no distengine metric)."""
    logits, y, p, t = _data().tensors
    pred = logits.argmax(dim=1)
    cm = torch.bincount(C * y + pred, minlength=C * C).reshape(C, C).double()
    tp = cm.diag()
    precision = tp / cm.sum(dim=0).clamp(min=1e-20)
    recall = tp / cm.sum(dim=1)
    support = cm.sum(dim=1)
    f1 = 2 * precision * recall / (precision + recall + 1e-15)
    f2 = 5 * precision * recall / (4 * precision + recall + 1e-15)
    iou = tp / (cm.sum(dim=0) + cm.sum(dim=1) - tp)
    top2 = logits.topk(2, dim=1).indices
    every2 = [i for i in range(N) if (i // GLOBAL_BATCH) % 2 == 1]
    err = (p - t).double()
    tm_auroc = torchmetrics.AUROC(task="multiclass", num_classes=C, thresholds=None)
    tm_f1 = torchmetrics.F1Score(task="multiclass", num_classes=C, average="macro")
    return {
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "precision_macro": precision.mean().item(),
        "recall_weighted": (recall * support).sum().item() / support.sum().item(),
        "precision_micro": (tp.sum() / cm.sum()).item(),
        "f1": f1.mean().item(),
        "f2_per_class": f2.tolist(),
        "cm": cm.long().tolist(),
        "miou": iou.mean().item(),
        "iou": iou.tolist(),
        "cm_acc": (tp.sum() / cm.sum()).item(),
        "top2": (top2 == y[:, None]).any(dim=1).double().mean().item(),
        "acc": (pred == y).double().mean().item(),
        "ra_epoch": (pred == y).double().mean().item(),
        "acc_every2": (pred == y)[every2].double().mean().item(),
        "max_err": [err.abs().max().item(), N],
        "mse": (err**2).mean().item(),
        "mae": err.abs().mean().item(),
        "rmse": (err**2).mean().sqrt().item(),
        "p_minus_r": (precision - recall).abs().max().item(),
        "tm_f1": tm_f1(logits, y).item(),
        "tm_mse": torchmetrics.functional.mean_squared_error(p, t).item(),
        "tm_auroc": tm_auroc(logits, y).item(),
    }


def _assert_matches(got: dict, ref: dict) -> None:
    for name, value in got.items():
        if name == "cm":
            assert value == ref["cm"]  # integer counts: exact
            continue
        assert value == pytest.approx(ref[name], rel=1e-6, abs=1e-9), name
    for exact in ("acc", "top2", "precision_micro", "cm_acc"):
        if exact in got:
            assert got[exact] == pytest.approx(ref[exact], rel=1e-12), exact


def test_one_process_equals_direct_computation():
    counters = {"idist_all_gather": 0, "dist_collectives": 0}
    ref = _reference()
    plain, seen = _evaluate(_plain_metrics(), counters)
    _assert_matches(plain, ref)
    cat, _ = _evaluate(_cat_metrics(), counters)
    _assert_matches({"tm_auroc": cat["tm_auroc"]}, ref)
    assert cat["precision"] == pytest.approx(ref["precision"], rel=1e-12)
    assert seen["epoch"] == [{"idist_all_gather": 0, "dist_collectives": 0}]


@pytest.mark.timeout(150)
@pytest.mark.parametrize("world_size", [2, 3])
def test_exact_at_world_size_with_one_collective_per_completion(tmp_path, world_size):
    assert N % world_size and GLOBAL_BATCH % world_size == 0
    idist.spawn(_job, world_size, backend="gloo", args=(str(tmp_path),))
    ref = _reference()
    iterations = -(-N // GLOBAL_BATCH)
    for rank in range(world_size):
        with open(tmp_path / f"rank{rank}.json") as f:
            r = json.load(f)
        assert r["world_size"] == world_size
        _assert_matches(r["plain"], ref)
        _assert_matches({"tm_auroc": r["cat"]["tm_auroc"]}, ref)
        assert r["cat"]["precision"] == pytest.approx(ref["precision"], rel=1e-12)
        # All 22 metrics of the plain evaluator: one all_gather, and no other collective
        # (torchmetrics' own synchronisation never runs), at the one completion event.
        assert r["plain_seen"]["epoch"] == [{"idist_all_gather": 1, "dist_collectives": 1}]
        assert (
            r["plain_seen"]["iteration"]
            == [{"idist_all_gather": 0, "dist_collectives": 0}] * iterations
        )
        # "cat" states: one gather of their lengths, then the one gather of all states.
        assert r["cat_seen"]["epoch"] == [{"idist_all_gather": 2, "dist_collectives": 2}]
