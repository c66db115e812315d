"""Metrics attached to an Engine (one process): usages, outputs, padding, Ignite parity, resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distengine.engine import Engine, Events
from distengine.metrics import Accuracy, Average, Loss, Metric, NotComputableError, RunningAverage


def _batches(n, size=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, classes, generator=g), torch.randint(0, classes, (size,), generator=g))
        for _ in range(n)
    ]


def _identity_engine():
    return Engine(lambda engine, batch: batch)


def _correct(batch):
    y_pred, y = batch
    return int((y_pred.argmax(dim=1) == y).sum())


# --- usages, attach / detach ---------------------------------------------------------------
def test_epoch_wise_resets_each_epoch_and_batch_wise_each_iteration():
    data = _batches(4)
    engine = _identity_engine()
    Accuracy().attach(engine, "acc")
    Accuracy().attach(engine, "batch_acc", usage="batch_wise")
    seen = []
    engine.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.metrics["batch_acc"])
    )
    engine.run(data, max_epochs=2)
    per_batch = [_correct(b) / 6 for b in data]
    assert seen == per_batch * 2
    assert engine.state.metrics["acc"] == sum(_correct(b) for b in data) / 24


def test_attach_detach_is_attached_and_rank_state_registration():
    engine = _identity_engine()
    acc = Accuracy()
    assert not acc.is_attached(engine)
    acc.attach(engine, "acc")
    assert acc.is_attached(engine) and not acc.is_attached(engine, usage="batch_wise")
    assert "metric:acc" in engine.rank_state_dict()["providers"]
    acc.detach(engine)
    assert not acc.is_attached(engine)
    assert "metric:acc" not in engine.rank_state_dict()["providers"]
    engine.run(_batches(2), max_epochs=1)
    assert "acc" not in engine.state.metrics


def test_attach_rejects_bad_usage_and_name():
    engine = _identity_engine()
    with pytest.raises(ValueError, match=r"usage must be a MetricUsage or one of .*got 'weekly'"):
        Accuracy().attach(engine, "acc", usage="weekly")
    with pytest.raises(TypeError, match="usage must be a str or a MetricUsage, got int"):
        RunningAverage(output_transform=lambda x: x).attach(engine, "ra", usage=1)
    with pytest.raises(TypeError, match="name must be a str, got int"):
        Accuracy().attach(engine, 3)


# --- outputs -------------------------------------------------------------------------------
def test_mapping_outputs_and_output_transform():
    data = _batches(3)
    engine = Engine(lambda e, b: {"y_pred": b[0], "y": b[1], "loss": F.cross_entropy(b[0], b[1])})
    Accuracy().attach(engine, "acc")
    Loss(F.cross_entropy).attach(engine, "nll")
    Average(output_transform=lambda out: out["loss"]).attach(engine, "avg_loss")
    engine.run(data, max_epochs=1)
    m = engine.state.metrics
    assert m["acc"] == sum(_correct(b) for b in data) / 18
    mean_loss = sum(F.cross_entropy(*b).item() for b in data) / 3
    assert m["nll"] == pytest.approx(mean_loss, rel=1e-6)
    assert m["avg_loss"] == pytest.approx(mean_loss, rel=1e-6)


def test_mapping_output_errors_name_the_keys():
    engine = Engine(lambda e, b: {"pred": b[0], "y": b[1]})
    Accuracy().attach(engine, "acc")
    with pytest.raises(
        ValueError, match=r"must have the keys \['y_pred', 'y'\], missing \['y_pred'\]"
    ):
        engine.run(_batches(1), max_epochs=1)
    engine = Engine(lambda e, b: {"y_pred": b[0], "y": b[1]})
    Average().attach(engine, "avg")
    with pytest.raises(TypeError, match="Average must be a tensor, number or sequence"):
        engine.run(_batches(1), max_epochs=1)


def test_lists_of_tensors_are_unrolled_per_sample():
    engine = Engine(lambda e, b: ([torch.tensor([0.2, 0.8]), torch.tensor([0.9, 0.1])], [1, 1]))
    acc = Accuracy()
    acc.attach(engine, "acc")
    engine.run([0, 1], max_epochs=1)
    assert acc.rank_state_dict()["_num_examples"] == 4
    assert engine.state.metrics["acc"] == 0.5


class _Spread(Metric):
    _reductions = {"_n": "sum", "_max": "max"}

    def reset(self):
        self._n, self._max = 0, float("-inf")

    def update(self, output):
        self._n += len(output[1])
        self._max = max(self._max, float(output[0].max()))

    def compute(self):
        if self._n == 0:
            raise NotComputableError("_Spread needs one example")
        return {"count": self._n, "top": self._max}


def test_dict_results_are_spread_over_their_keys():
    engine = _identity_engine()
    _Spread().attach(engine, "spread")
    data = _batches(2)
    engine.run(data, max_epochs=1)
    m = engine.state.metrics
    assert m["count"] == 12 and m["top"] == max(float(b[0].max()) for b in data)
    assert m["spread"] == {"count": 12, "top": m["top"]}
    engine = _identity_engine()
    _Spread().attach(engine, "count")
    with pytest.raises(ValueError, match="conflicts with a key"):
        engine.run(data, max_epochs=1)


# --- padding -------------------------------------------------------------------------------
def _padded_engine(pads):
    def step(engine, batch):
        engine.state.batch_padding = pads[engine.state.iteration - 1]
        return batch

    return Engine(step)


def test_padding_rows_are_dropped_and_padding_only_batches_skipped():
    data = _batches(3, size=5)
    pads = [0, 2, 5]  # last batch: all padding
    engine = _padded_engine(pads)
    acc, loss, avg = Accuracy(), Loss(F.cross_entropy), Average(output_transform=lambda o: o[0])
    acc.attach(engine, "acc")
    loss.attach(engine, "loss")
    avg.attach(engine, "avg")
    engine.run(data, max_epochs=1)
    kept = [(b[0][: 5 - p], b[1][: 5 - p]) for b, p in zip(data, pads) if p < 5]
    n = sum(len(y) for _, y in kept)
    assert acc.rank_state_dict()["_num_examples"] == n == 8
    assert engine.state.metrics["acc"] == sum(_correct(b) for b in kept) / n
    ref_loss = sum(F.cross_entropy(p, y, reduction="sum").item() for p, y in kept) / n
    assert engine.state.metrics["loss"] == pytest.approx(ref_loss, rel=1e-6)
    ref_avg = torch.cat([p for p, _ in kept]).double().mean(dim=0)
    assert torch.allclose(engine.state.metrics["avg"], ref_avg)


def test_padding_larger_than_the_batch_is_an_error():
    engine = _padded_engine([7])
    Accuracy().attach(engine, "acc")
    with pytest.raises(ValueError, match="batch_padding is 7 but an output item has only 5 rows"):
        engine.run(_batches(1, size=5), max_epochs=1)


# --- RunningAverage: Ignite parity ----------------------------------------------------------
def _trace(engine_cls, events, make_metric, data, usage=None, max_epochs=3):
    engine = engine_cls(lambda e, b: b)
    metric = make_metric()
    if usage is None:
        metric.attach(engine, "ra")
    else:
        metric.attach(engine, "ra", usage=usage)
    values = []
    engine.add_event_handler(
        events.ITERATION_COMPLETED, lambda e: values.append(float(e.state.metrics["ra"]))
    )
    engine.run(data, max_epochs=max_epochs)
    return values


@pytest.mark.parametrize("src", ["output", "accuracy"])
@pytest.mark.parametrize("epoch_bound", [None, True, False])
def test_running_average_matches_ignite(src, epoch_bound):
    from ignite.engine import Engine as IgniteEngine
    from ignite.engine import Events as IgniteEvents
    from ignite.metrics import Accuracy as IgniteAccuracy
    from ignite.metrics import RunningAverage as IgniteRunningAverage

    data = _batches(4, seed=7)

    def ours():
        if src == "output":
            return RunningAverage(
                output_transform=lambda o: F.cross_entropy(*o).item(),
                alpha=0.9,
                epoch_bound=epoch_bound,
            )
        return RunningAverage(Accuracy(), alpha=0.9, epoch_bound=epoch_bound)

    def theirs():
        if src == "output":
            return IgniteRunningAverage(
                output_transform=lambda o: F.cross_entropy(*o).item(), alpha=0.9
            )
        return IgniteRunningAverage(IgniteAccuracy(), alpha=0.9)

    ignite_usage = "single_epoch_running_batch_wise" if epoch_bound else "running_batch_wise"
    expected = _trace(IgniteEngine, IgniteEvents, theirs, data, usage=ignite_usage)
    got = _trace(Engine, Events, ours, data)
    assert len(got) == 12
    assert got == pytest.approx(expected, rel=1e-12)
    # the epoch-bound variant restarts from the epoch's first value
    assert (got[4] == got[0]) == bool(epoch_bound)


# --- mid-epoch resume (contract 5) ----------------------------------------------------------
def _evaluating_engine(log):
    engine = Engine(lambda e, b: b)
    Accuracy().attach(engine, "acc")
    Loss(F.cross_entropy).attach(engine, "loss")
    RunningAverage(output_transform=lambda o: F.cross_entropy(*o).item()).attach(engine, "running")
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: log.append(dict(e.state.metrics)))
    return engine


@pytest.mark.parametrize("stop_at", [13, 20])  # mid-epoch 2, and its last iteration (of 3 epochs)
def test_mid_epoch_resume_gives_the_uninterrupted_epoch_metrics(stop_at):
    data = _batches(10, seed=11)
    full_log = []
    _evaluating_engine(full_log).run(data, max_epochs=3)

    saved = {}
    first = _evaluating_engine([])

    @first.on(Events.ITERATION_COMPLETED(once=stop_at))
    def save_and_stop(engine):
        saved["sd"] = engine.state_dict()
        engine.terminate()

    first.run(data, max_epochs=3)
    assert "metric:acc" in saved["sd"]["rank_state"]["providers"]

    resumed_log = []
    resumed = _evaluating_engine(resumed_log)
    resumed.load_state_dict(saved["sd"])
    resumed.run(data)
    assert resumed_log == full_log[1:]

    if stop_at == 20:
        return
    # negative control: the same resume without the metrics' rank state counts fewer batches
    control_log = []
    control = _evaluating_engine(control_log)
    sd = dict(saved["sd"])
    sd["rank_state"] = dict(sd["rank_state"], providers={})
    control.load_state_dict(sd)
    control.run(data)
    assert (
        control_log[0]["acc"] != full_log[1]["acc"] or control_log[0]["loss"] != full_log[1]["loss"]
    )


def test_a_per_batch_value_from_a_padding_batch_is_not_averaged():
    """A rank whose batch is a padding row computes its loss from padding alone: metrics of
    such per-batch values (a 0-d loss) skip that batch instead of averaging it in."""
    from distengine.data import ResumableDistributedSampler
    from distengine.metrics import RunningAverage

    # rank 1 of 2 over 10 samples, global batch 4: its third batch is one padding row
    sampler = ResumableDistributedSampler(10, 4, num_replicas=2, rank=1, shuffle=False)
    loader = torch.utils.data.DataLoader(
        torch.arange(10.0), batch_size=sampler.loader_batch_size, sampler=sampler
    )
    seen = []
    eng = Engine(lambda e, b: torch.tensor(100.0) if e.state.batch_padding else b.mean())
    RunningAverage(output_transform=lambda x: x, alpha=0.5).attach(eng, "avg")
    eng.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: seen.append((e.state.batch_padding, e.state.metrics.get("avg"))),
    )
    eng.run(loader, max_epochs=1)
    assert [p for p, _ in seen] == [0, 0, 1]
    assert seen[2][1] == seen[1][1]  # the padding batch's 100.0 was not folded in
