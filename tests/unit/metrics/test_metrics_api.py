"""Ignite's metric API around the metrics: usages, MetricsLambda and arithmetic,
state_dict / load_state_dict, sync_all_reduce declarations, and TorchMetric (one process)."""

from __future__ import annotations

import ignite.engine as ie
import ignite.metrics as im
import pytest
import torch
import torchmetrics  # a test dependency (requirements-ci.txt)

from distengine.engine import Engine, Events
from distengine.metrics import (
    Accuracy,
    BatchFiltered,
    BatchWise,
    ConfusionMatrix,
    EpochWise,
    Metric,
    MetricsLambda,
    MetricUsage,
    NotComputableError,
    Precision,
    Recall,
    RunningAverage,
    RunningBatchWise,
    RunningEpochWise,
    SingleEpochRunningBatchWise,
    TorchMetric,
    reinit__is_reduced,
    sync_all_reduce,
)
from distengine.metrics.metric import BatchWise as BatchWiseFromMetric


def _batches(n, size=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, classes, generator=g), torch.randint(0, classes, (size,), generator=g))
        for _ in range(n)
    ]


def _engine():
    return Engine(lambda engine, batch: batch)


# --- usages ---------------------------------------------------------------------------------
def test_usage_classes_and_names():
    assert BatchWise is BatchWiseFromMetric
    expected = {
        EpochWise: (
            "epoch_wise",
            Events.EPOCH_STARTED,
            Events.ITERATION_COMPLETED,
            Events.EPOCH_COMPLETED,
        ),
        BatchWise: (
            "batch_wise",
            Events.ITERATION_STARTED,
            Events.ITERATION_COMPLETED,
            Events.ITERATION_COMPLETED,
        ),
        RunningEpochWise: (
            "running_epoch_wise",
            Events.STARTED,
            Events.EPOCH_COMPLETED,
            Events.EPOCH_COMPLETED,
        ),
        RunningBatchWise: (
            "running_batch_wise",
            Events.STARTED,
            Events.ITERATION_COMPLETED,
            Events.ITERATION_COMPLETED,
        ),
        SingleEpochRunningBatchWise: (
            "single_epoch_running_batch_wise",
            Events.EPOCH_STARTED,
            Events.ITERATION_COMPLETED,
            Events.ITERATION_COMPLETED,
        ),
    }
    for cls, (name, started, updated, completed) in expected.items():
        u = cls()
        assert (u.usage_name, u.STARTED, u.ITERATION_COMPLETED, u.COMPLETED) == (
            name,
            started,
            updated,
            completed,
        )


@pytest.mark.parametrize("usage", ["batch_wise", BatchWise()])
def test_usage_given_as_object_or_string(usage):
    engine = _engine()
    acc = Accuracy()
    acc.attach(engine, "acc", usage=usage)
    assert acc.is_attached(engine, usage="batch_wise") and acc.is_attached(engine, BatchWise())
    assert not acc.is_attached(engine)  # epoch_wise
    seen = []
    engine.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.metrics["acc"])
    )
    data = _batches(3)
    engine.run(data, max_epochs=1)
    assert seen == [int((p.argmax(1) == y).sum()) / len(y) for p, y in data]
    acc.detach(engine, usage=BatchWise())
    assert not acc.is_attached(engine, "batch_wise")


def test_batch_filtered_updates_only_selected_iterations():
    data = _batches(6)
    engine = _engine()
    Accuracy().attach(engine, "every2", usage=BatchFiltered(every=2))
    Accuracy().attach(engine, "all")
    state = engine.run(data, max_epochs=1)
    picked = data[1::2]
    correct = sum(int((p.argmax(1) == y).sum()) for p, y in picked)
    assert state.metrics["every2"] == correct / (6 * len(picked))
    assert state.metrics["every2"] != state.metrics["all"]


def test_running_epoch_wise_average_of_an_epoch_metric_matches_ignite():
    from ignite.metrics.metric import RunningEpochWise as IgniteRunningEpochWise

    data = _batches(4, seed=2)

    def step(engine, batch):  # flip the scores every other epoch: epoch accuracies differ
        logits, y = batch
        return (logits if engine.state.epoch % 2 else -logits), y

    ours, theirs = Engine(step), ie.Engine(step)
    RunningAverage(Accuracy(), alpha=0.5).attach(ours, "ra", usage=RunningEpochWise())
    im.RunningAverage(im.Accuracy(), alpha=0.5).attach(theirs, "ra", usage=IgniteRunningEpochWise())
    got, want = [], []
    ours.add_event_handler(Events.EPOCH_COMPLETED, lambda e: got.append(e.state.metrics["ra"]))
    theirs.add_event_handler(
        ie.Events.EPOCH_COMPLETED, lambda e: want.append(e.state.metrics["ra"])
    )
    ours.run(data, max_epochs=3)
    theirs.run(data, max_epochs=3)
    assert len(got) == 3 and len(set(got)) == 3
    assert got == pytest.approx(want)


def test_single_epoch_running_batch_wise_matches_ignite():
    data = _batches(5, seed=3)
    ours, theirs = _engine(), ie.Engine(lambda engine, batch: batch)
    RunningAverage(Accuracy()).attach(ours, "ra", usage="single_epoch_running_batch_wise")
    im.RunningAverage(im.Accuracy()).attach(theirs, "ra", usage="single_epoch_running_batch_wise")
    got, want = [], []
    ours.add_event_handler(Events.ITERATION_COMPLETED, lambda e: got.append(e.state.metrics["ra"]))
    theirs.add_event_handler(
        ie.Events.ITERATION_COMPLETED, lambda e: want.append(e.state.metrics["ra"])
    )
    ours.run(data, max_epochs=2)
    theirs.run(data, max_epochs=2)
    assert got == pytest.approx(want)


def test_bad_usages_are_refused():
    engine = _engine()
    with pytest.raises(ValueError, match="usage must be a MetricUsage or one of"):
        Accuracy().attach(engine, "a", usage="hourly")
    with pytest.raises(TypeError, match="usage must be a str or a MetricUsage"):
        Accuracy().attach(engine, "a", usage=3)
    odd = MetricUsage(Events.COMPLETED, Events.EPOCH_COMPLETED, Events.ITERATION_COMPLETED)
    with pytest.raises(ValueError, match="reset at STARTED, EPOCH_STARTED or ITERATION_STARTED"):
        Accuracy().attach(engine, "a", usage=odd)
    with pytest.raises(TypeError, match="must be an event"):
        MetricUsage("started", Events.EPOCH_COMPLETED, Events.ITERATION_COMPLETED)


# --- MetricsLambda and arithmetic -------------------------------------------------------------
def test_arithmetic_indexing_and_method_calls_build_lambdas():
    data = _batches(3, classes=3, seed=4)
    p, r = Precision(average=False), Recall(average=False)
    f1 = p * r * 2 / (p + r + 1e-20)
    first = p[0]
    mean_p = p.mean().item()
    scaled = 1 + 2 * r - 0.5
    assert all(isinstance(m, MetricsLambda) for m in (f1, first, mean_p, scaled))
    engine = _engine()
    for name, m in (("f1", f1), ("first", first), ("mean_p", mean_p), ("scaled", scaled)):
        m.attach(engine, name)
    state = engine.run(data, max_epochs=1)
    ip, ir = im.Precision(average=False), im.Recall(average=False)
    for b in data:
        ip.update(b)
        ir.update(b)
    pv, rv = ip.compute(), ir.compute()
    assert torch.allclose(state.metrics["f1"], pv * rv * 2 / (pv + rv + 1e-20))
    assert state.metrics["first"] == pytest.approx(pv[0].item())
    assert state.metrics["mean_p"] == pytest.approx(pv.mean().item())
    assert torch.allclose(state.metrics["scaled"], 1 + 2 * rv - 0.5)
    assert not p.is_attached(engine)  # used, not attached under a name
    with pytest.raises(AttributeError, match="no attribute '_private'"):
        p._private  # noqa: B018 - private names are never turned into lambdas


def test_lambda_parts_are_updated_once_even_when_shared():
    calls = []

    class Counting(Accuracy):
        def update(self, output):
            calls.append(1)
            super().update(output)

    acc = Counting()
    engine = _engine()
    acc.attach(engine, "acc")
    (acc * 100).attach(engine, "percent")
    MetricsLambda(lambda a, b: a - b, acc, acc).attach(engine, "zero")
    state = engine.run(_batches(4), max_epochs=1)
    assert len(calls) == 4
    assert state.metrics["percent"] == pytest.approx(100 * state.metrics["acc"])
    assert state.metrics["zero"] == 0


def test_lambda_update_api_and_attach_rules():
    data = _batches(2)
    p, r = Precision(average=True), Recall(average=True)
    both = MetricsLambda(lambda a, b: (a, b), p, r)
    for b in data:
        both.update(b)
    assert both.compute() == (p.compute(), r.compute())
    with pytest.raises(ValueError, match="reset\\(\\) it before attaching"):
        both.attach(_engine(), "both")
    both.reset()
    engine = _engine()
    both.attach(engine, "both")
    with pytest.raises(ValueError, match="already attached to an engine"):
        both.update(data[0])
    p.detach(engine)  # detaching a part detaches the lambda (Ignite)
    assert not both.is_attached(engine)
    both.attach(engine, "both")
    assert both.is_attached(engine)
    with pytest.raises(TypeError, match="needs a callable f"):
        MetricsLambda(3, p)


# --- state_dict ---------------------------------------------------------------------------------
def test_state_dict_round_trip_and_ignite_format():
    data = _batches(3)
    cm, p = ConfusionMatrix(3), Precision(average=False)
    for b in data[:2]:
        cm.update(b)
        p.update(b)
    sd_cm, sd_p = cm.state_dict(), p.state_dict()
    assert list(sd_cm) == ["__metric_state_per_rank"] and len(sd_cm["__metric_state_per_rank"]) == 1
    assert set(sd_p["__metric_state_per_rank"][0]) == {
        "_numerator",
        "_denominator",
        "_weight",
        "_updated",
    }
    cm2, p2 = ConfusionMatrix(3), Precision(average=False)
    cm2.load_state_dict(sd_cm)
    p2.load_state_dict(sd_p)
    for m in (cm, p, cm2, p2):
        m.update(data[2])
    assert torch.equal(cm2.compute(), cm.compute())
    assert torch.equal(p2.compute(), p.compute())
    # what was saved does not share storage with the live metric
    cm.reset()
    assert sd_cm["__metric_state_per_rank"][0]["confusion_matrix"].sum() > 0


def test_load_state_dict_rejects_bad_input():
    m = Accuracy()
    with pytest.raises(TypeError, match="should be a dictionary"):
        m.load_state_dict(123)
    with pytest.raises(ValueError, match="single key '__metric_state_per_rank'"):
        m.load_state_dict({"abc": 1})
    with pytest.raises(ValueError, match="one per rank \\(world size 1\\), but got 0"):
        m.load_state_dict({"__metric_state_per_rank": []})


def test_nested_metric_state():
    class Pair(Metric):
        _state_dict_all_req_keys = ("parts", "count")

        def __init__(self):
            self.parts = {"acc": Accuracy(), "p": [Precision(average=True)]}
            super().__init__()

        def reset(self):
            self.count = 0
            self.parts["acc"].reset()
            self.parts["p"][0].reset()

        def update(self, output):
            self.count += 1
            self.parts["acc"].update(output)
            self.parts["p"][0].update(output)

        def compute(self):
            return self.count

    a, b = Pair(), Pair()
    for batch in _batches(2):
        a.update(batch)
    b.load_state_dict(a.state_dict())
    assert b.count == 2 and b.parts["acc"].compute() == a.parts["acc"].compute()
    assert b.parts["p"][0].compute() == a.parts["p"][0].compute()

    class Bad(Pair):
        _state_dict_all_req_keys = ("weird",)

    bad = Bad()
    bad.weird = object()
    with pytest.raises(TypeError, match="unsupported type object"):
        bad.state_dict()
    del bad.weird
    with pytest.raises(ValueError, match="declares state 'weird' but has no such attribute"):
        bad.state_dict()


def test_metric_is_abstract():
    with pytest.raises(TypeError):
        Metric()


# --- Ignite's declaration decorators -------------------------------------------------------------
def test_sync_all_reduce_declares_reductions():
    class Extremes(Metric):
        @reinit__is_reduced
        def reset(self):
            self._lo, self._hi, self._n, self._p = float("inf"), float("-inf"), 0, 1.0

        @reinit__is_reduced
        def update(self, output):
            self._lo = min(self._lo, float(output.min()))
            self._hi = max(self._hi, float(output.max()))
            self._n += len(output)

        @sync_all_reduce("_lo:MIN", "_hi:MAX", "_n", "_p:PRODUCT")
        def compute(self):
            return self._lo, self._hi, self._n

    assert Extremes._reductions == {"_lo": "min", "_hi": "max", "_n": "sum", "_p": "prod"}
    m = Extremes()
    m.update(torch.tensor([3.0, -1.0, 2.0]))
    assert m.compute() == (-1.0, 3.0, 3)
    with pytest.raises(ValueError, match="Reduction operation is not valid"):
        sync_all_reduce("_x:MEDIAN")


# --- TorchMetric --------------------------------------------------------------------------------


def _padded_engine(pads):
    def step(engine, batch):
        engine.state.batch_padding = pads[engine.state.iteration - 1]
        return batch

    return Engine(step)


def test_torch_metric_on_an_engine_drops_padding():
    data = _batches(3, size=5, classes=4, seed=6)
    pads = [0, 2, 5]  # the last batch is padding only
    engine = _padded_engine(pads)
    f1 = TorchMetric(torchmetrics.F1Score(task="multiclass", num_classes=4, average="macro"))
    auroc = TorchMetric(torchmetrics.AUROC(task="multiclass", num_classes=4, thresholds=None))
    mse = TorchMetric(
        torchmetrics.MeanSquaredError(),
        output_transform=lambda o: {"preds": o[0][:, 0], "target": o[1].float()},
    )
    for name, m in (("f1", f1), ("auroc", auroc), ("mse", mse)):
        m.attach(engine, name)
    state = engine.run(data, max_epochs=1)
    kept = [(p[: 5 - k], y[: 5 - k]) for (p, y), k in zip(data, pads) if k < 5]
    preds, target = torch.cat([p for p, _ in kept]), torch.cat([y for _, y in kept])
    ref_f1 = torchmetrics.F1Score(task="multiclass", num_classes=4, average="macro")(preds, target)
    ref_auroc = torchmetrics.AUROC(task="multiclass", num_classes=4, thresholds=None)(preds, target)
    assert state.metrics["f1"] == pytest.approx(ref_f1.item())
    assert state.metrics["auroc"] == pytest.approx(ref_auroc.item())
    assert state.metrics["mse"] == pytest.approx(
        ((preds[:, 0] - target) ** 2).mean().item(), rel=1e-6
    )
    # torchmetrics' own synchronisation is off: the engine's reduction replaces it
    assert f1.metric.sync_on_compute is False


def test_torch_metric_refuses_what_it_cannot_reduce():
    class Custom(torchmetrics.Metric):
        def __init__(self):
            super().__init__()
            self.add_state("total", torch.tensor(0.0), dist_reduce_fx=lambda x: x.sum(0))

        def update(self, x):
            self.total += x.sum()

        def compute(self):
            return self.total

    with pytest.raises(ValueError, match="state 'total' has dist_reduce_fx=<lambda>"):
        TorchMetric(Custom())

    class NoReduce(Custom):
        def __init__(self):
            torchmetrics.Metric.__init__(self)
            self.add_state("total", torch.tensor(0.0), dist_reduce_fx=None)

    with pytest.raises(ValueError, match="dist_reduce_fx=None"):
        TorchMetric(NoReduce())
    with pytest.raises(TypeError, match="wrap each metric of the MetricCollection"):
        TorchMetric(torchmetrics.MetricCollection([torchmetrics.MeanSquaredError()]))
    with pytest.raises(TypeError, match="must be a torchmetrics.Metric"):
        TorchMetric(Accuracy())
    with pytest.raises(NotComputableError, match="at least one update"):
        TorchMetric(torchmetrics.MeanSquaredError()).compute()


def test_torch_metric_rank_state_round_trip():
    data = _batches(4, classes=4, seed=7)
    a = TorchMetric(torchmetrics.AUROC(task="multiclass", num_classes=4, thresholds=None))
    for b in data[:2]:
        a.update(b)
    saved = a.rank_state_dict()
    b_ = TorchMetric(torchmetrics.AUROC(task="multiclass", num_classes=4, thresholds=None))
    b_.load_rank_state_dict(saved)
    for m in (a, b_):
        for b in data[2:]:
            m.update(b)
    assert b_.compute().item() == pytest.approx(a.compute().item())
    with pytest.raises(ValueError, match="missing states"):
        b_.load_rank_state_dict({"states": {}})


def test_checkpoint_saves_a_metric_through_its_rank_state(tmp_path):
    """Metric.state_dict() is a collective (Ignite's format), so Checkpoint, which calls
    state_dict() on the writer alone, must save a metric through its rank state."""
    from distengine.handlers import Checkpoint

    class NoStateDict(Accuracy):
        def state_dict(self):
            raise AssertionError("Checkpoint must not call a metric's collective state_dict")

    acc = NoStateDict()
    for b in _batches(2):
        acc.update(b)
    engine = _engine()
    engine.run([0], max_epochs=1)
    Checkpoint({"acc": acc}, str(tmp_path))(engine)
    restored = Accuracy()
    Checkpoint.load_objects({"acc": restored}, str(tmp_path / "acc_1.pt"))
    assert restored.rank_state_dict()["_num_examples"] == 12 and restored.compute() == acc.compute()


def test_sync_all_reduce_on_another_method_and_its_checks():
    class Spread(Metric):
        def reset(self):
            self._lo, self._hi, self._label = 0.0, 0.0, "x"

        def update(self, output):
            self._lo, self._hi = (
                min(self._lo, float(output.min())),
                max(self._hi, float(output.max())),
            )

        def compute(self):
            return self.width()

        @sync_all_reduce("_lo:MIN", "_hi:MAX")
        def width(self):
            return self._hi - self._lo

        @sync_all_reduce("_label")
        def label(self):
            return self._label

        @sync_all_reduce("_missing")
        def missing(self):
            return 0

    m = Spread()
    m.update(torch.tensor([-1.0, 2.5]))
    assert m.width() == 3.5 and m.compute() == 3.5
    assert Spread._reductions == {}  # only compute's declaration joins the engine's collective
    with pytest.raises(TypeError, match="reduces numbers and tensors, but '_label'"):
        m.label()
    with pytest.raises(ValueError, match="has no attribute named '_missing'"):
        m.missing()


# --- mid-epoch resume with the new metrics -------------------------------------------------------
def _scaled_by_epoch(engine, batch):  # epoch-dependent scores: the epochs' values differ
    logits, y = batch
    return logits * (1 + engine.state.epoch), y


def _resumable_engine(log):
    engine = Engine(_scaled_by_epoch)
    precision = Precision(average=False)
    precision.attach(engine, "precision")
    cm = ConfusionMatrix(3)
    from distengine.metrics import mIoU

    mIoU(cm).attach(engine, "miou")
    TorchMetric(torchmetrics.AUROC(task="multiclass", num_classes=3, thresholds=None)).attach(
        engine, "auroc"
    )
    RunningAverage(Recall(average="macro"), alpha=0.5).attach(
        engine, "ra", usage=RunningEpochWise()
    )

    def record(e):
        log.append(
            {
                k: v.tolist() if isinstance(v, torch.Tensor) else v
                for k, v in e.state.metrics.items()
            }
        )

    engine.add_event_handler(Events.EPOCH_COMPLETED, record)
    return engine


@pytest.mark.parametrize("stop_at", [7, 13])  # mid-epoch 1 and mid-epoch 2 (of 3 epochs of 5)
def test_mid_epoch_resume_of_new_metrics_gives_the_uninterrupted_values(stop_at):
    data = _batches(5, seed=12)
    full_log = []
    _resumable_engine(full_log).run(data, max_epochs=3)

    saved = {}
    first = _resumable_engine([])

    @first.on(Events.ITERATION_COMPLETED(once=stop_at))
    def save_and_stop(engine):
        saved["sd"] = engine.state_dict()
        engine.terminate()

    first.run(data, max_epochs=3)
    resumed_log = []
    resumed = _resumable_engine(resumed_log)
    resumed.load_state_dict(saved["sd"])
    resumed.run(data)
    done = (stop_at - 1) // 5  # epochs completed before the stop
    assert len(resumed_log) == 3 - done
    assert resumed_log == full_log[done:]  # bitwise: same counts, same order
