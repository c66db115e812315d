"""Metrics on their own (no engine): values against reference computations, errors, state."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import distengine.distributed as idist
from distengine.metrics import Accuracy, Average, Loss, Metric, NotComputableError, RunningAverage
from distengine.metrics.reduction import reduce_states


def _ref_accuracy(pairs):
    """Correct / total computed sample by sample in Python."""
    correct = total = 0
    for y_pred, y in pairs:
        for p, t in zip(y_pred.tolist(), y.tolist()):
            correct += int(p == t)
            total += 1
    return correct / total


# --- Accuracy ----------------------------------------------------------------------------
def test_accuracy_binary_matches_reference():
    g = torch.Generator().manual_seed(0)
    acc = Accuracy()
    batches = [
        (torch.randint(0, 2, (7,), generator=g), torch.randint(0, 2, (7,), generator=g))
        for _ in range(4)
    ]
    for b in batches:
        acc.update(b)
    assert acc.compute() == _ref_accuracy(batches)


def test_accuracy_binary_with_channel_dim_of_one():
    acc = Accuracy()
    acc.update((torch.tensor([[1], [0], [1]]), torch.tensor([1, 1, 1])))
    assert acc.compute() == 2 / 3


def test_accuracy_multiclass_matches_reference():
    g = torch.Generator().manual_seed(1)
    acc = Accuracy()
    pairs = []
    for _ in range(3):
        scores, y = torch.rand(9, 4, generator=g), torch.randint(0, 4, (9,), generator=g)
        acc.update((scores, y))
        pairs.append(([max(range(4), key=lambda c, row=row: row[c]) for row in scores.tolist()], y))
    ref_correct = sum(int(p == t) for preds, y in pairs for p, t in zip(preds, y.tolist()))
    assert acc.compute() == ref_correct / 27


def test_accuracy_multilabel_matches_reference():
    g = torch.Generator().manual_seed(2)
    y_pred = torch.randint(0, 2, (10, 3), generator=g)
    y = torch.randint(0, 2, (10, 3), generator=g)
    y[:4] = y_pred[:4]  # some rows all correct
    acc = Accuracy(is_multilabel=True)
    assert acc.is_multilabel
    acc.update((y_pred, y))
    expected = sum(int(p == t) for p, t in zip(y_pred.tolist(), y.tolist())) / 10
    assert expected >= 0.4
    assert acc.compute() == expected


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel"])
def test_accuracy_agrees_with_ignite(kind):
    from ignite.metrics import Accuracy as IgniteAccuracy

    g = torch.Generator().manual_seed(3)
    ours, theirs = (
        Accuracy(is_multilabel=kind == "multilabel"),
        IgniteAccuracy(is_multilabel=kind == "multilabel"),
    )
    for _ in range(5):
        if kind == "binary":
            out = (
                torch.randint(0, 2, (8, 5), generator=g),
                torch.randint(0, 2, (8, 5), generator=g),
            )
        elif kind == "multiclass":
            out = (torch.rand(8, 3, 5, generator=g), torch.randint(0, 3, (8, 5), generator=g))
        else:
            out = (
                torch.randint(0, 2, (8, 3, 2), generator=g),
                torch.randint(0, 2, (8, 3, 2), generator=g),
            )
        ours.update(out)
        theirs.update(out)
    assert ours.compute() == theirs.compute()


@pytest.mark.parametrize(
    ("output", "error", "match"),
    [
        (
            (torch.rand(4, 3), torch.randint(0, 3, (4, 2))),
            ValueError,
            "must have compatible shapes",
        ),
        ((torch.rand(4, 3, 2, 2), torch.randint(0, 3, (4,))), ValueError, r"y must have shape"),
        ((torch.tensor([0.5, 1.0]), torch.tensor([0, 1])), ValueError, "only 0s and 1s"),
        (([0, 1], torch.tensor([0, 1])), TypeError, "tensors, got list and Tensor"),
        (torch.tensor([0, 1]), TypeError, r"expects \(y_pred, y\), got Tensor"),
    ],
)
def test_accuracy_rejects_bad_input(output, error, match):
    with pytest.raises(error, match=match):
        Accuracy().update(output)


def test_accuracy_multilabel_needs_matching_shapes():
    with pytest.raises(ValueError, match="num_classes > 1"):
        Accuracy(is_multilabel=True).update((torch.ones(4, 1), torch.ones(4, 1)))


def test_accuracy_rejects_type_change_until_reset():
    acc = Accuracy()
    acc.update((torch.rand(4, 3), torch.randint(0, 3, (4,))))
    with pytest.raises(ValueError, match="from multiclass to binary"):
        acc.update((torch.ones(4), torch.ones(4)))
    with pytest.raises(ValueError, match="classes changed from 3 to 5"):
        acc.update((torch.rand(4, 5), torch.randint(0, 5, (4,))))
    acc.reset()
    acc.update((torch.ones(4), torch.ones(4)))
    assert acc.compute() == 1.0


# --- Loss and Average --------------------------------------------------------------------
def test_loss_is_the_per_example_mean_over_uneven_batches():
    g = torch.Generator().manual_seed(4)
    loss = Loss(F.cross_entropy)
    per_sample = []
    for n in (5, 2, 7):
        logits, y = torch.randn(n, 4, generator=g), torch.randint(0, 4, (n,), generator=g)
        loss.update((logits, y))
        per_sample += F.cross_entropy(logits, y, reduction="none").tolist()
    assert loss.compute() == pytest.approx(sum(per_sample) / len(per_sample), rel=1e-6)


def test_loss_passes_keyword_arguments_and_batch_size():
    weight = torch.tensor([1.0, 3.0])
    loss = Loss(F.cross_entropy, batch_size=lambda y: 2 * len(y))
    logits, y = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 1])
    loss.update((logits, y, {"weight": weight}))
    loss.update((logits, y))
    expected = (F.cross_entropy(logits, y, weight=weight) + F.cross_entropy(logits, y)) / 2
    assert loss.compute() == pytest.approx(expected.item(), rel=1e-6)


def test_loss_rejects_a_loss_that_is_not_averaged():
    loss = Loss(lambda p, t: (p - t) ** 2)
    with pytest.raises(ValueError, match=r"0-dim tensor, got Tensor of shape \(3,\)"):
        loss.update((torch.zeros(3), torch.ones(3)))
    with pytest.raises(TypeError, match="loss_fn must be callable, got int"):
        Loss(3)


def test_average_counts_like_ignite():
    from ignite.metrics import Average as IgniteAverage

    cases = [
        [1.0, 2.5, 7],
        [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 5.0])],
        [torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]]), torch.tensor([[1.0, 1.0]])],
    ]
    for values in cases:
        ours, theirs = Average(), IgniteAverage()
        for v in values:
            ours.update(v)
            theirs.update(v)
        assert ours.num_examples == theirs.num_examples
        assert torch.allclose(torch.as_tensor(ours.compute()), torch.as_tensor(theirs.compute()))
    avg = Average()
    for v in (1.0, 2.0, 6.0):
        avg.update(v)
    assert avg.compute().item() == 3.0


def test_average_rejects_other_types():
    with pytest.raises(TypeError, match="number or a tensor, got str"):
        Average().update("1")


@pytest.mark.parametrize(
    "metric",
    [Accuracy(), Loss(F.mse_loss), Average(), RunningAverage(output_transform=lambda x: x)],
    ids=["accuracy", "loss", "average", "running_average"],
)
def test_compute_before_update_raises_not_computable(metric):
    assert issubclass(NotComputableError, RuntimeError)
    with pytest.raises(NotComputableError, match="at least one"):
        metric.compute()


# --- RunningAverage on its own -----------------------------------------------------------
def test_running_average_folds_values():
    ra = RunningAverage(output_transform=lambda x: x, alpha=0.5)
    ra.update(4.0)
    assert ra.compute() == 4.0
    ra.update(torch.tensor(0.0))
    ra.update(2.0)
    assert float(ra.compute()) == pytest.approx((4.0 * 0.5 + 0.0) * 0.5 + 1.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"src": 3}, TypeError, "src must be a Metric or None, got int"),
        (
            {"output_transform": lambda x: x, "alpha": 0.0},
            ValueError,
            r"alpha must be a number in \(0, 1\]",
        ),
        ({}, ValueError, "output_transform is required"),
        ({"src": Accuracy(), "output_transform": lambda x: x}, ValueError, "must be None when src"),
        ({"src": Accuracy(), "device": "cpu"}, ValueError, "device must be None"),
    ],
)
def test_running_average_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        RunningAverage(**kwargs)


# --- declared state, per-rank state ------------------------------------------------------
def test_custom_metric_must_declare_known_ops():
    with pytest.raises(
        ValueError,
        match=r"one of \['cat', 'max', 'mean', 'min', 'prod', 'sum'\], got '_x': 'median'",
    ):

        class Bad(Metric):  # noqa: F841 - the class statement itself raises
            _reductions = {"_x": "median"}


def test_compute_at_world_size_one_makes_no_collective(monkeypatch):
    calls = []
    monkeypatch.setattr(idist, "all_gather", lambda *a, **k: calls.append(a))
    acc, loss = Accuracy(), Loss(F.mse_loss)
    acc.update((torch.ones(3), torch.ones(3)))
    loss.update((torch.ones(3), torch.zeros(3)))
    assert reduce_states([acc, loss]) is None
    assert (acc.compute(), loss.compute()) == (1.0, 1.0)
    assert calls == []


def test_rank_state_round_trip_continues_counting():
    g = torch.Generator().manual_seed(5)
    batches = [
        (torch.rand(6, 3, generator=g), torch.randint(0, 3, (6,), generator=g)) for _ in range(4)
    ]
    whole = Accuracy()
    for b in batches:
        whole.update(b)
    first = Accuracy()
    for b in batches[:2]:
        first.update(b)
    saved = first.rank_state_dict()
    first.update(batches[2])  # later changes must not leak into the saved state
    second = Accuracy()
    second.load_rank_state_dict(saved)
    for b in batches[2:]:
        second.update(b)
    assert second.compute() == whole.compute()
    assert second.rank_state_dict()["_num_examples"] == 24


def test_running_average_rank_state_includes_src():
    ra = RunningAverage(Accuracy(), alpha=0.9)
    ra.src.update((torch.ones(2), torch.ones(2)))
    ra.update()
    sd = ra.rank_state_dict()
    assert set(sd) == {"_value", "_num_values", "src"}
    other = RunningAverage(Accuracy(), alpha=0.9)
    other.load_rank_state_dict(sd)
    assert other.compute() == ra.compute() == 1.0
    with pytest.raises(ValueError, match="under key 'src'"):
        other.load_rank_state_dict({"_value": 1.0, "_num_values": 1})


def test_load_rank_state_rejects_bad_input():
    with pytest.raises(TypeError, match="expects a mapping, got list"):
        Accuracy().load_rank_state_dict([1])
    with pytest.raises(ValueError, match=r"missing \['_num_examples'"):
        Accuracy().load_rank_state_dict({"_num_correct": torch.tensor(1)})
