"""distengine.contrib (Ignite's contrib.engines.common and contrib.handlers paths), one process.

Where Ignite 0.5.5 defines the behaviour, the same script is run through Ignite's
``contrib.engines.common`` as the oracle.
"""

import importlib
import math
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch

import distengine.handlers as handlers
from distengine.contrib.engines import common
from distengine.engine import Engine, Events
from distengine.handlers import Checkpoint, DiskSaver, PiecewiseLinear
from distengine.metrics import Accuracy


def _ignite():
    return pytest.importorskip("ignite.contrib.engines.common")


def _events_of(engine_cls):
    """The Events enum that goes with ``engine_cls`` (ours or Ignite's)."""
    if engine_cls is Engine:
        return Events
    from ignite.engine import Events as IgniteEvents

    return IgniteEvents


def _losses(n):
    g = torch.Generator().manual_seed(3)
    return [float(v) for v in torch.rand(n, generator=g)]


def _collect_running(engine_cls, setup, output, n_iter, names):
    """Runs ``n_iter`` iterations whose outputs are ``output(i)``; returns the averages seen."""
    seen = []
    trainer = engine_cls(lambda e, b: output(b))
    setup(trainer, output_names=names, with_pbars=False)
    trainer.add_event_handler(
        _events_of(engine_cls).ITERATION_COMPLETED,
        lambda e: seen.append([e.state.metrics[n] for n in names]),
    )
    trainer.run(list(range(n_iter)), max_epochs=1)
    return seen


@pytest.mark.parametrize(
    "make",
    [
        lambda v: {"loss": v, "other": 2 * v},
        lambda v: (v, 2 * v),
        lambda v: [torch.tensor(v), torch.tensor(2 * v)],
    ],
    ids=["dict", "tuple", "list-of-tensors"],
)
def test_running_averages_of_named_outputs_match_ignite(make):
    ig = _ignite()
    from ignite.engine import Engine as IgniteEngine

    losses = _losses(12)
    names = ["loss", "other"]
    ours = _collect_running(
        Engine, common.setup_common_training_handlers, lambda i: make(losses[i]), 12, names
    )
    theirs = _collect_running(
        IgniteEngine, ig.setup_common_training_handlers, lambda i: make(losses[i]), 12, names
    )
    assert len(ours) == len(theirs) == 12
    for mine, ignite_values in zip(ours, theirs):
        assert mine == pytest.approx(ignite_values, rel=1e-6)


def test_a_scalar_output_is_averaged_under_its_name():
    losses = _losses(5)
    seen = _collect_running(
        Engine,
        common.setup_common_training_handlers,
        lambda i: torch.tensor(losses[i]),
        5,
        ["loss"],
    )
    assert seen[0] == pytest.approx([losses[0]])
    assert seen[1] == pytest.approx([0.98 * losses[0] + 0.02 * losses[1]])


def test_an_output_that_cannot_be_named_fails_with_what_was_given():
    trainer = Engine(lambda e, b: "text")
    common.setup_common_training_handlers(trainer, output_names=["loss"], with_pbars=False)
    with pytest.raises(TypeError, match="output should be a mapping, a sequence.*got str"):
        trainer.run([1], max_epochs=1)
    trainer = Engine(lambda e, b: {"acc": 1.0})
    common.setup_common_training_handlers(trainer, output_names=["loss"], with_pbars=False)
    with pytest.raises(KeyError, match=r"'loss'.*keys \['acc'\]"):
        trainer.run([1], max_epochs=1)


def _lr_trace(engine_cls, setup, make_scheduler, n_iter=10):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = make_scheduler(opt)
    lrs = []
    trainer = engine_cls(lambda e, b: lrs.append(opt.param_groups[0]["lr"]) or 0.0)
    setup(trainer, lr_scheduler=sched, with_pbars=False)
    trainer.run(list(range(n_iter)), max_epochs=1)
    return lrs


def test_torch_and_param_schedulers_give_ignites_learning_rates():
    ig = _ignite()
    from ignite.engine import Engine as IgniteEngine
    from ignite.handlers import PiecewiseLinear as IgnitePiecewiseLinear

    def step_lr(opt):
        return torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)

    milestones = [(0, 0.0), (4, 1.0), (10, 0.0)]
    ours = _lr_trace(Engine, common.setup_common_training_handlers, step_lr)
    theirs = _lr_trace(IgniteEngine, ig.setup_common_training_handlers, step_lr)
    assert ours == theirs and len(set(ours)) > 2

    ours = _lr_trace(
        Engine,
        common.setup_common_training_handlers,
        lambda opt: PiecewiseLinear(opt, "lr", milestones_values=milestones),
    )
    theirs = _lr_trace(
        IgniteEngine,
        ig.setup_common_training_handlers,
        lambda opt: IgnitePiecewiseLinear(opt, "lr", milestones_values=milestones),
    )
    assert ours == pytest.approx(theirs) and ours[:5] == pytest.approx([0, 0.25, 0.5, 0.75, 1])


def test_nan_stops_the_run_unless_stop_on_nan_is_off():
    outputs = [1.0, math.nan, 2.0, 3.0]
    for stop_on_nan, iterations in ((True, 2), (False, 4)):
        trainer = Engine(lambda e, b: outputs[b])
        common.setup_common_training_handlers(trainer, stop_on_nan=stop_on_nan, with_pbars=False)
        assert trainer.run(list(range(4)), max_epochs=1).iteration == iterations


def _checkpoint_names(directory):
    return sorted(p.name for p in Path(directory).iterdir() if p.suffix == ".pt")


def test_checkpoints_every_save_every_iters_with_checkpoint_kwargs(tmp_path):
    model = torch.nn.Linear(2, 1)
    for kind in ("output_path", "save_handler"):
        trainer = Engine(lambda e, b: 0.0)
        where = tmp_path / kind
        arg = (
            {"output_path": where}
            if kind == "output_path"
            else {"save_handler": DiskSaver(where, create_dir=True)}
        )
        common.setup_common_training_handlers(
            trainer,
            to_save={"model": model, "trainer": trainer},
            save_every_iters=3,
            n_saved=2,
            with_pbars=False,
            **arg,
        )
        trainer.run(list(range(10)), max_epochs=1)
        assert _checkpoint_names(where) == [
            "training_checkpoint_6.pt",
            "training_checkpoint_9.pt",
        ]


def _resumable_run(ckpt_dir, stop_at=None, resume=None):
    losses = _losses(20)
    model = torch.nn.Linear(2, 1)
    trainer = Engine(lambda e, b: {"loss": losses[b]})
    common.setup_common_training_handlers(
        trainer,
        to_save={"trainer": trainer, "model": model},
        output_path=ckpt_dir,
        save_every_iters=4,
        output_names=["loss"],
        with_pbars=False,
        n_saved=None,
    )
    if stop_at is not None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
    if resume is not None:
        Checkpoint.load_objects({"trainer": trainer, "model": model}, resume)
    trainer.run(list(range(10)), max_epochs=2, seed=1)
    return trainer.state


def test_a_resumed_run_continues_the_running_averages_exactly(tmp_path):
    """The averages are updated before the checkpoint of the same iteration saves them."""
    full = _resumable_run(tmp_path / "full")
    _resumable_run(tmp_path / "stopped", stop_at=10)
    resumed = _resumable_run(
        tmp_path / "resumed", resume=tmp_path / "stopped" / "training_checkpoint_8.pt"
    )
    assert resumed.iteration == full.iteration == 20
    assert resumed.metrics["loss"] == full.metrics["loss"]


def test_bad_arguments_say_what_was_expected(tmp_path):
    trainer = Engine(lambda e, b: 0.0)
    model = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="mutually exclusive"):
        common.setup_common_training_handlers(
            trainer, output_path=tmp_path, save_handler=DiskSaver(tmp_path)
        )
    with pytest.raises(ValueError, match="give output_path or save_handler"):
        common.setup_common_training_handlers(trainer, to_save={"model": model})
    with pytest.raises(ValueError, match="GpuInfo"):
        common.setup_common_training_handlers(trainer, with_gpu_stats=True)
    with pytest.raises(TypeError, match="lr_scheduler should be .* got int"):
        common.setup_common_training_handlers(trainer, lr_scheduler=3)
    with pytest.raises(TypeError, match="output_names should be a list of names"):
        common.setup_common_training_handlers(trainer, output_names="loss")
    with pytest.raises(ValueError, match="save_every_iters should be a positive int, got 0"):
        common.setup_common_training_handlers(trainer, save_every_iters=0)
    with pytest.raises(TypeError, match="trainer should be an Engine"):
        common.setup_common_training_handlers(object())
    with pytest.warns(UserWarning, match=r"\['n_saved'\] are Checkpoint arguments"):
        common.setup_common_training_handlers(trainer, n_saved=2, with_pbars=False)


def test_a_distributed_sampler_on_one_process_is_ignored_with_a_warning():
    sampler = torch.utils.data.DistributedSampler(list(range(8)), num_replicas=1, rank=0)
    trainer = Engine(lambda e, b: 0.0)
    with pytest.warns(UserWarning, match="world size is 1: it is ignored"):
        common.setup_common_training_handlers(trainer, train_sampler=sampler, with_pbars=False)


def test_progress_bars_over_iterations_and_epochs(capsys):
    trainer = Engine(lambda e, b: {"loss": 0.5})
    common.setup_common_training_handlers(trainer, output_names=["loss"], log_every_iters=2)
    trainer.run(list(range(4)), max_epochs=2)
    err = capsys.readouterr().err
    # the bar over iterations (first drawn at iteration 2), then the bar over epochs
    assert "Epoch [1/2]: [2/4]" in err and "loss=0.5" in err
    assert "Epoch: 100%" in err and "2/2" in err


def _evaluator_with(scores, engine_cls=Engine):
    """An evaluator whose "acc" metric is the next of ``scores`` at each run."""
    evaluator = engine_cls(lambda e, b: None)
    it = iter(scores)

    @evaluator.on(_events_of(engine_cls).COMPLETED)
    def set_score(engine):
        engine.state.metrics["acc"] = next(it)

    return evaluator


def _best_models_run(directory, module, engine_cls, scores, **kwargs):
    model = torch.nn.Linear(2, 1)
    evaluator = _evaluator_with(scores, engine_cls)
    trainer = engine_cls(lambda e, b: None)
    trainer.add_event_handler(_events_of(engine_cls).EPOCH_COMPLETED, lambda e: evaluator.run([0]))
    handler = module.gen_save_best_models_by_val_score(
        module.DiskSaver(directory, require_empty=False, create_dir=True),
        evaluator,
        {"model": model},
        "acc",
        n_saved=2,
        trainer=trainer,
        **kwargs,
    )
    trainer.run([0], max_epochs=len(scores))
    return handler


def test_best_models_by_val_score_keep_ignites_names(tmp_path):
    ig = _ignite()
    from ignite.engine import Engine as IgniteEngine

    scores = [0.3, 0.7, 0.5, 0.9, 0.1]
    for sign, tag in ((1.0, "val"), (-1.0, "test")):
        _best_models_run(tmp_path / f"ours{sign}", common, Engine, scores, score_sign=sign, tag=tag)
        _best_models_run(tmp_path / f"ig{sign}", ig, IgniteEngine, scores, score_sign=sign, tag=tag)
        assert _checkpoint_names(tmp_path / f"ours{sign}") == _checkpoint_names(
            tmp_path / f"ig{sign}"
        )
    assert _checkpoint_names(tmp_path / "ours1.0") == [
        "best_model_2_val_acc=0.7000.pt",
        "best_model_4_val_acc=0.9000.pt",
    ]


def test_save_best_model_by_val_score_writes_into_a_directory(tmp_path):
    model = torch.nn.Linear(2, 1)
    evaluator = _evaluator_with([0.25, 0.75, 0.5])
    handler = common.save_best_model_by_val_score(
        tmp_path / "best", evaluator, model, "acc", n_saved=1
    )
    assert isinstance(handler, Checkpoint)
    for _ in range(3):
        evaluator.run([0])
    # without a trainer there is no step in the names
    assert _checkpoint_names(tmp_path / "best") == ["best_model_val_acc=0.7500.pt"]
    saved = torch.load(tmp_path / "best" / "best_model_val_acc=0.7500.pt")
    assert set(saved) == set(model.state_dict())  # one object: its state dict alone
    with pytest.raises(TypeError, match="models should be a torch.nn.Module or a dict"):
        common.gen_save_best_models_by_val_score(tmp_path, evaluator, [model], "acc")


def test_early_stopping_by_val_score_stops_the_trainer_after_patience():
    evaluator = _evaluator_with([0.5, 0.6, 0.6, 0.55, 0.7, 0.8])
    trainer = Engine(lambda e, b: None)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0]))
    es = common.add_early_stopping_by_val_score(2, evaluator, trainer, "acc")
    assert isinstance(es, handlers.EarlyStopping)
    assert trainer.run([0], max_epochs=6).epoch == 4  # no gain at epochs 3 and 4

    evaluator = _evaluator_with([0.5, 0.4, 0.3, 0.35])  # a loss: lower is better
    trainer = Engine(lambda e, b: None)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0]))
    common.add_early_stopping_by_val_score(1, evaluator, trainer, "acc", score_sign=-1.0)
    assert trainer.run([0], max_epochs=4).epoch == 4


def test_setup_tb_logging_writes_ignites_tags(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    trainer = Engine(lambda e, b: {"batch loss": 0.25})
    common.setup_common_training_handlers(trainer, output_names=["batch loss"], with_pbars=False)
    evaluators = {}
    for tag in ("training", "test"):
        ev = Engine(lambda e, b: (torch.tensor([[0.0, 1.0]]), torch.tensor([1])))
        Accuracy().attach(ev, "Accuracy")
        evaluators[tag] = ev
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: [ev.run([0]) for ev in evaluators.values()]
    )
    out = tmp_path / "tb"  # a Path, as Ignite's cifar10 example passes it
    tb_logger = common.setup_tb_logging(out, trainer, opt, evaluators=evaluators, log_every_iters=2)
    trainer.run(list(range(4)), max_epochs=2)
    tb_logger.close()
    acc = EventAccumulator(str(out))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {
        "training/batch loss",
        "lr/group_0",
        "training/Accuracy",
        "test/Accuracy",
    }
    assert [e.step for e in acc.Scalars("training/batch loss")] == [2, 4, 6, 8]
    assert [e.step for e in acc.Scalars("lr/group_0")] == [2, 4, 6, 8]
    assert [(e.step, e.value) for e in acc.Scalars("test/Accuracy")] == [(1, 1.0), (2, 1.0)]


def test_setup_tb_logging_checks_its_arguments(tmp_path):
    trainer = Engine(lambda e, b: None)
    with pytest.raises(TypeError, match="optimizers should be an optimizer or a dict"):
        common.setup_tb_logging(tmp_path, trainer, optimizers=[1])
    with pytest.raises(TypeError, match="evaluators should be an Engine or a dict"):
        common.setup_tb_logging(tmp_path, trainer, evaluators=[trainer])
    with pytest.raises(TypeError, match=r"evaluators\['x'\] should be an Engine"):
        common.setup_tb_logging(tmp_path, trainer, evaluators={"x": 1})
    with pytest.raises(ValueError, match="log_every_iters should be a positive int or None"):
        common.setup_tb_logging(tmp_path, trainer, log_every_iters=0)
    with pytest.raises(TypeError, match="trainer_metric_names should be 'all' or a list"):
        common.setup_tb_logging(tmp_path, trainer, trainer_metric_names=3)
    assert not os.listdir(tmp_path)  # nothing written before a value is logged


def test_contrib_handlers_are_distengines_handlers():
    import distengine.contrib.handlers as contrib_handlers

    for name in contrib_handlers.__all__:
        assert getattr(contrib_handlers, name) is getattr(handlers, name)
    assert common.get_default_score_fn is Checkpoint.get_default_score_fn
    assert common.setup_common_distrib_training_handlers is common.setup_common_training_handlers


@pytest.mark.parametrize(
    "module, name",
    [
        ("tensorboard_logger", "TensorboardLogger"),
        ("tqdm_logger", "ProgressBar"),
        ("param_scheduler", "PiecewiseLinear"),
        ("base_logger", "BaseLogger"),
    ],
)
def test_moved_contrib_submodules_import_with_a_deprecation_warning(module, name):
    full = f"distengine.contrib.handlers.{module}"
    sys.modules.pop(full, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mod = importlib.import_module(full)
    assert getattr(mod, name) is getattr(handlers, name)
    assert [w.category for w in caught] == [DeprecationWarning]
    assert f"{full} moved to distengine.handlers" in str(caught[0].message)


def test_setup_logging_attaches_to_any_distengine_logger(tmp_path):
    import csv

    from distengine.handlers import CSVLogger
    from distengine.handlers.logger_utils import setup_logging

    trainer = Engine(lambda e, b: None)
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: e.state.metrics.update(loss=e.state.iteration / 10)
    )
    path = tmp_path / "log.csv"
    logger = setup_logging(CSVLogger(str(path)), trainer, log_every_iters=None)
    trainer.run([0, 1, 2], max_epochs=1)
    logger.close()
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [float(r["training/loss"]) for r in rows] == [0.1, 0.2, 0.3]  # every iteration
    with pytest.raises(TypeError, match="logger should be a BaseLogger"):
        setup_logging(object(), trainer)
