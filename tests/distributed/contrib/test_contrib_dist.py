"""distengine.contrib.engines.common on 2 gloo ranks (one spawned job; assertions in the
test process): the helpers are called on every rank, checkpoints and best models are
written once, early stopping stops both ranks after the same epoch, the running average
is the same on both ranks at epoch end, and ``train_sampler`` leaves the engine's data
order alone while a sampler of another loader gets Ignite's ``set_epoch(epoch - 1)``."""

import os

import pytest
import torch

import distengine.distributed as idist
from distengine.contrib.engines import common
from distengine.engine import Engine, Events
from distengine.metrics import Accuracy

# accuracy of the evaluator after each trainer epoch: no gain at epochs 3 and 4
ACCURACY = [0.5, 0.75, 0.75, 0.5, 1.0, 1.0]
PATIENCE, STOPPED_AT = 2, 4
N, BATCH = 24, 4  # 6 global batches per pass; epochs of 3 iterations


def _evaluator(trainer):
    """Its accuracy after epoch e is ACCURACY[e - 1] (4 rows per rank per run)."""

    def step(engine, batch):
        correct = int(ACCURACY[trainer.state.epoch - 1] * 8)
        rank = idist.get_rank()
        y = torch.zeros(4, dtype=torch.long)
        hits = max(0, min(4, correct - 4 * rank))  # rank 0's rows are scored first
        y_pred = torch.zeros(4, 2)
        y_pred[:hits, 0] = 1.0
        y_pred[hits:, 1] = 1.0
        return y_pred, y

    evaluator = Engine(step)
    Accuracy().attach(evaluator, "accuracy")
    return evaluator


def _reads(trainer_setup, epochs, state=None, keep=None):
    """Samples read by this rank (``state``: resume from it; ``keep``: record the state
    after that iteration into it)."""
    loader = idist.auto_dataloader(list(range(N)), batch_size=BATCH, shuffle=True)
    seen = []
    trainer = Engine(lambda e, b: seen.extend(b.tolist()) or float(b.sum()))
    trainer_setup(trainer, loader)
    if keep is not None:
        at, into = keep
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED(once=at), lambda e: into.append(e.state_dict())
        )
    if state is not None:
        trainer.load_state_dict(state)
    trainer.run(loader, max_epochs=epochs, epoch_length=3, seed=5)
    return seen


def _job(local_rank, out):
    rank = idist.get_rank()
    result = {}

    # train_sampler = the engine's own sampler: the order is the engine's (pass 0 spans
    # epochs 1 and 2 here; Ignite's set_epoch(epoch - 1) would reshuffle at epoch 2)
    def plain(trainer, loader):
        common.setup_common_training_handlers(trainer, with_pbars=False)

    def with_sampler(trainer, loader):
        common.setup_common_training_handlers(
            trainer, train_sampler=loader.sampler, with_pbars=False
        )

    kept = []
    result["reads"] = _reads(plain, 4, keep=(3, kept))
    result["reads_with_sampler"] = _reads(with_sampler, 4)
    # resumed after epoch 1, in the middle of pass 0 (the iterator is made before
    # EPOCH_STARTED of epoch 2, and the sampler reads its epoch at the first fetch)
    result["resumed_with_sampler"] = _reads(with_sampler, 4, state=kept[0])

    other = torch.utils.data.DistributedSampler(list(range(8)), num_replicas=2, rank=rank)
    epochs_set = []
    other.set_epoch = epochs_set.append
    trainer = Engine(lambda e, b: 0.0)
    common.setup_common_training_handlers(trainer, train_sampler=other, with_pbars=False)
    trainer.run([0, 1], max_epochs=3)
    result["other_sampler_epochs"] = epochs_set
    try:
        common.setup_common_training_handlers(
            Engine(lambda e, b: 0.0), train_sampler=object(), with_pbars=False
        )
        result["no_set_epoch"] = None
    except TypeError as e:
        result["no_set_epoch"] = str(e)

    # the full set-up on every rank
    model = torch.nn.Linear(2, 2)
    loader = idist.auto_dataloader(list(range(N)), batch_size=BATCH, shuffle=True)
    trainer = Engine(lambda e, b: {"loss": float(b.sum()) * (rank + 1)})
    evaluator = _evaluator(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0]))
    common.setup_common_training_handlers(
        trainer,
        train_sampler=loader.sampler,
        to_save={"trainer": trainer, "model": model},
        output_path=os.path.join(out, "ckpt"),
        save_every_iters=3,
        output_names=["loss"],
        with_pbars=False,
        n_saved=2,
    )
    common.gen_save_best_models_by_val_score(
        os.path.join(out, "best"), evaluator, model, "accuracy", n_saved=2, trainer=trainer
    )
    common.add_early_stopping_by_val_score(PATIENCE, evaluator, trainer, "accuracy")
    ends = []
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: ends.append(e.state.metrics["loss"])
    )
    trainer.run(loader, max_epochs=len(ACCURACY), epoch_length=3, seed=1)
    result["stopped_at"] = (trainer.state.epoch, trainer.state.iteration)
    result["accuracy"] = evaluator.state.metrics["accuracy"]
    result["loss_at_epoch_ends"] = ends
    return result


@pytest.mark.timeout(120)
def test_common_helpers_on_two_ranks(tmp_path):
    results = idist.spawn(_job, 2, backend="gloo", args=(str(tmp_path),))

    for r in results:
        assert r["reads_with_sampler"] == r["reads"]
        assert r["resumed_with_sampler"] == r["reads"][len(r["reads"]) // 4 :]
        assert r["other_sampler_epochs"] == [0, 1, 2]
        assert r["no_set_epoch"] is not None and "set_epoch" in r["no_set_epoch"]
        assert r["no_set_epoch"].endswith("got object")

    # early stopping: both ranks stop after the same epoch, on the reduced metric
    assert [r["stopped_at"] for r in results] == [(STOPPED_AT, 3 * STOPPED_AT)] * 2
    assert [r["accuracy"] for r in results] == [ACCURACY[STOPPED_AT - 1]] * 2
    # the running average of the output is the mean over ranks at each epoch end
    assert results[0]["loss_at_epoch_ends"] == results[1]["loss_at_epoch_ends"]

    # written once, by rank 0, where every rank pointed
    ckpts = sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.suffix == ".pt")
    assert ckpts == ["training_checkpoint_12.pt", "training_checkpoint_9.pt"]
    best = sorted(p.name for p in (tmp_path / "best").iterdir() if p.suffix == ".pt")
    assert best == ["best_model_2_val_accuracy=0.7500.pt", "best_model_3_val_accuracy=0.7500.pt"]
