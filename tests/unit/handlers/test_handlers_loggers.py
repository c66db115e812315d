"""CSVLogger and TensorBoardLogger on one process: what lands in the files."""

import csv
import io
import sys
from types import SimpleNamespace

import fsspec
import pytest
import torch

from distengine.engine import Engine, Events
from distengine.handlers.base_logger import global_step_from_engine
from distengine.handlers.csv_logger import CSVLogger
from distengine.handlers.tensorboard_logger import TensorBoardLogger


def _trainer_and_evaluator():
    """A trainer with a loss output and an optimizer whose lr halves each epoch, and an
    evaluator that sets an accuracy metric."""
    # Anything with param_groups will do (a real torch optimizer costs a second to import).
    optimizer = SimpleNamespace(param_groups=[{"lr": 0.4, "params": []}])
    trainer = Engine(lambda e, b: torch.tensor(b / 10))
    evaluator = Engine(lambda e, b: b)

    @evaluator.on(Events.COMPLETED)
    def accuracy(engine):
        engine.state.metrics["accuracy"] = trainer.state.epoch / 10

    @trainer.on(Events.EPOCH_COMPLETED)
    def evaluate_and_decay(engine):
        evaluator.run([0], max_epochs=1)
        optimizer.param_groups[0]["lr"] /= 2

    return trainer, evaluator, optimizer


def _attach_all(logger, trainer, evaluator, optimizer):
    logger.attach_output_handler(
        trainer, Events.ITERATION_COMPLETED, tag="training", output_transform=lambda x: {"loss": x}
    )
    logger.attach_output_handler(
        evaluator,
        Events.COMPLETED,
        tag="validation",
        metric_names=["accuracy"],
        global_step_transform=global_step_from_engine(trainer),
    )
    logger.attach_opt_params_handler(trainer, Events.EPOCH_STARTED, optimizer)


def _read_csv(url, **storage_options):
    with fsspec.open(url, "r", newline="", **storage_options) as f:
        return list(csv.DictReader(io.StringIO(f.read())))


def test_csv_rows_for_outputs_metrics_and_lr(tmp_path):
    trainer, evaluator, optimizer = _trainer_and_evaluator()
    path = str(tmp_path / "nested" / "log.csv")
    with CSVLogger(path) as logger:
        _attach_all(logger, trainer, evaluator, optimizer)
        data = [1, 2, 3]
        trainer.run(data, max_epochs=2)
    rows = _read_csv(path)
    assert list(rows[0]) == [
        "epoch",
        "iteration",
        "lr/group_0",
        "training/loss",
        "validation/accuracy",
    ]
    loss_rows = [r for r in rows if r["training/loss"]]
    assert [(int(r["epoch"]), int(r["iteration"])) for r in loss_rows] == [
        (e, (e - 1) * len(data) + i) for e in (1, 2) for i in (1, 2, 3)
    ]
    assert [float(r["training/loss"]) for r in loss_rows] == pytest.approx(
        [b / 10 for b in data] * 2
    )
    val = [r for r in rows if r["validation/accuracy"]]
    # Labelled with the trainer's epoch and iteration, not the evaluator's.
    assert [(r["epoch"], r["iteration"], float(r["validation/accuracy"])) for r in val] == [
        ("1", "3", pytest.approx(0.1)),
        ("2", "6", pytest.approx(0.2)),
    ]
    lr = [float(r["lr/group_0"]) for r in rows if r["lr/group_0"]]
    assert lr == pytest.approx([0.4, 0.2])
    assert all(sum(bool(v) for v in r.values()) == 3 for r in rows)  # one event per row


def test_csv_each_row_is_readable_before_close(tmp_path):
    path = str(tmp_path / "log.csv")
    trainer = Engine(lambda e, b: float(b))
    logger = CSVLogger(path)
    logger.attach_output_handler(
        trainer, Events.ITERATION_COMPLETED, tag="t", output_transform=lambda x: x
    )
    counts = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: counts.append(len(_read_csv(path)))
    )
    trainer.run([5, 6, 7], max_epochs=1)
    assert counts == [1, 2, 3]
    logger.close()


def test_csv_through_an_fsspec_url_and_append():
    url = "memory://distengine-test/run/log.csv"
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url)
    for run in range(2):
        trainer = Engine(lambda e, b: float(b))
        with CSVLogger(url, append=run > 0) as logger:
            logger.attach_output_handler(
                trainer, Events.ITERATION_COMPLETED, tag="t", output_transform=lambda x: {"v": x}
            )
            trainer.run([run, run], max_epochs=1)
    rows = _read_csv(url)
    assert [float(r["t/v"]) for r in rows] == [0.0, 0.0, 1.0, 1.0]  # first run's rows kept
    fs.rm(url)


def test_csv_append_refuses_a_foreign_file(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    trainer = Engine(lambda e, b: 1.0)
    logger = CSVLogger(str(path), append=True)
    logger.attach_output_handler(
        trainer, Events.ITERATION_COMPLETED, tag="t", output_transform=lambda x: x
    )
    with pytest.raises(ValueError, match="header starts with epoch,iteration"):
        trainer.run([0], max_epochs=1)


def test_logger_argument_errors(tmp_path):
    trainer = Engine(lambda e, b: b)
    logger = CSVLogger(str(tmp_path / "x.csv"))
    with pytest.raises(ValueError, match="metric_names, output_transform or state_attributes"):
        logger.attach_output_handler(trainer, Events.ITERATION_COMPLETED, tag="t")
    with pytest.raises(TypeError, match="param_groups"):
        logger.attach_opt_params_handler(trainer, Events.EPOCH_STARTED, optimizer=object())
    with pytest.raises(TypeError, match="path_or_url"):
        CSVLogger(tmp_path)
    with pytest.raises(TypeError, match="engine"):
        global_step_from_engine("trainer")


def test_tensorboard_event_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, evaluator, optimizer = _trainer_and_evaluator()
    log_dir = str(tmp_path / "tb")
    with TensorBoardLogger(log_dir) as logger:
        _attach_all(logger, trainer, evaluator, optimizer)
        trainer.run([1, 2, 3], max_epochs=2)
    acc = EventAccumulator(log_dir)
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"training/loss", "validation/accuracy", "lr/group_0"}
    loss = acc.Scalars("training/loss")
    assert [e.step for e in loss] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in loss] == pytest.approx([0.1, 0.2, 0.3] * 2)
    val = acc.Scalars("validation/accuracy")
    assert [(e.step, round(e.value, 6)) for e in val] == [(1, 0.1), (2, 0.2)]  # trainer epochs


def test_tensorboard_missing_gives_a_clear_import_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install 'distengine\[tensorboard\]'"):
        TensorBoardLogger(str(tmp_path))


def test_ignite_handler_objects_write_through_the_scalar_loggers(tmp_path):
    """Ignite's form (logger.attach(engine, OutputHandler(...), event)) and the weight and
    gradient handlers write the same rows as the attach_* shortcuts."""
    from distengine.handlers import GradsScalarHandler, OutputHandler, WeightsScalarHandler

    model = torch.nn.Linear(2, 1)
    model.weight.data.fill_(1.0)
    model.bias.data.fill_(2.0)

    def step(engine, batch):
        model.zero_grad()
        model(torch.ones(1, 2)).sum().backward()
        return {"loss": torch.tensor(0.5), "parts": [1, 2]}

    trainer = Engine(step)
    path = str(tmp_path / "log.csv")
    with CSVLogger(path) as logger:
        logger.attach(
            trainer,
            OutputHandler("train", output_transform=lambda out: out),
            Events.EPOCH_COMPLETED,
        )
        logger.attach(trainer, WeightsScalarHandler(model, whitelist=["weight"]), Events.COMPLETED)
        logger.attach(trainer, GradsScalarHandler(model, tag="g"), Events.COMPLETED)
        trainer.run([0], max_epochs=2)
    rows = _read_csv(path)
    assert [r["train/loss"] for r in rows if r["train/loss"]] == ["0.5", "0.5"]
    assert [r["train/parts/1"] for r in rows if r["train/parts/1"]] == ["2", "2"]
    weights = [r["weights_norm/weight"] for r in rows if r["weights_norm/weight"]]
    grads = [r["g/grads_norm/bias"] for r in rows if r["g/grads_norm/bias"]]
    assert [float(w) for w in weights] == [pytest.approx(2**0.5)]
    assert "weights_norm/bias" not in rows[0]  # not whitelisted
    assert grads == ["1.0"]


def test_base_logger_calls_custom_handlers_per_event_of_an_events_list():
    from distengine.handlers.base_logger import BaseLogger

    class Recorder(BaseLogger):
        def _create_output_handler(self, *args, **kwargs):
            raise NotImplementedError

        def _create_opt_params_handler(self, *args, **kwargs):
            raise NotImplementedError

    calls = []
    trainer = Engine(lambda e, b: b)
    logger = Recorder()
    handles = logger.attach(
        trainer,
        lambda engine, lg, event, extra=None: calls.append((lg is logger, event.name, extra)),
        Events.STARTED | Events.COMPLETED,
        extra=7,
    )
    trainer.run([0], max_epochs=1)
    assert calls == [(True, "STARTED", 7), (True, "COMPLETED", 7)] and len(handles) == 2
    with pytest.raises(RuntimeError, match="Unknown event name"):
        logger.attach(trainer, lambda *a: None, "not_an_event")


def test_global_step_from_engine_options():
    trainer = Engine(lambda e, b: None)
    trainer.state.iteration, trainer.state.epoch = 12, 3
    evaluator = Engine(lambda e, b: None)
    assert global_step_from_engine(trainer)(evaluator, Events.COMPLETED) == 3
    assert global_step_from_engine(trainer)(evaluator, Events.ITERATION_COMPLETED(every=5)) == 12
    by_iteration = global_step_from_engine(trainer, custom_event_name=Events.ITERATION_COMPLETED)
    assert by_iteration(evaluator, Events.EPOCH_COMPLETED) == 12
    assert global_step_from_engine(trainer)(evaluator, "custom_event") == 3  # no counter: epoch
    assert global_step_from_engine(trainer, fallback_attr="iteration")(evaluator, "custom") == 12
    with pytest.raises(TypeError, match="fallback_attr"):
        global_step_from_engine(trainer, fallback_attr=1)
