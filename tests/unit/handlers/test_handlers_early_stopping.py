"""EarlyStopping: when it stops, its options, and its state across a resume."""

import math

import pytest

from distengine.engine import Engine, Events
from distengine.handlers.early_stopping import EarlyStopping


def _run(scores, data_epochs=20, **kwargs):
    """Runs a trainer whose epoch ``e`` produces ``scores[e - 1]``; returns (trainer, handler)."""
    trainer = Engine(lambda e, b: b)
    handler = EarlyStopping(
        score_function=lambda eng: scores[eng.state.epoch - 1], trainer=trainer, **kwargs
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, handler)
    trainer.run([0, 0], max_epochs=min(data_epochs, len(scores)))
    return trainer, handler


def test_stops_after_patience_checks_without_improvement():
    trainer, handler = _run([1.0, 2.0, 2.0, 1.5, 3.0, 4.0], patience=2)
    assert trainer.state.epoch == 4  # epochs 3 and 4 did not beat 2.0
    assert handler.counter == 2 and handler.best_score == 2.0


def test_improvement_resets_the_count():
    trainer, handler = _run([1.0, 0.5, 2.0, 1.0, 3.0, 2.5], patience=2)
    assert trainer.state.epoch == 6  # never two bad checks in a row
    assert handler.counter == 1 and handler.best_score == 3.0


SLOW_RISE = [1.0, 1.05, 1.1, 1.15, 1.2, 1.21, 1.22, 1.23]


def test_threshold_and_cumulative():
    trainer, _ = _run(SLOW_RISE, patience=2, threshold=0.08)
    # The best moves up with each small step, so no step of 0.05 ever clears 0.08.
    assert trainer.state.epoch == 3
    trainer, handler = _run(SLOW_RISE, patience=2, threshold=0.08, cumulative=True)
    # Measured from the last improvement: 1.1 and then 1.2 clear 0.08, 1.21/1.22 do not.
    assert trainer.state.epoch == 7 and handler.best_score == 1.2


def test_mode_min_and_relative_delta():
    trainer, _ = _run([5.0, 4.0, 4.5, 4.2, 1.0], patience=2, mode="min")
    assert trainer.state.epoch == 4
    trainer, _ = _run(
        [10.0, 9.5, 9.0, 8.0, 7.0], patience=2, mode="min", threshold_mode="rel", threshold=0.06
    )
    assert trainer.state.epoch == 3  # steps of about 5 % do not clear a 6 % relative delta


def test_ignite_055_parameter_names_and_the_deprecated_ones():
    trainer, _ = _run(SLOW_RISE, patience=2, threshold=0.08, cumulative=True)
    assert trainer.state.epoch == 7
    with pytest.warns(DeprecationWarning, match="'min_delta' is deprecated"):
        handler = EarlyStopping(
            2, lambda e: 0.0, Engine(lambda e, b: b), threshold=0.2, min_delta=0.1
        )
    assert handler.threshold == 0.1  # the old name wins, as in Ignite 0.5.5
    with pytest.warns(DeprecationWarning):
        handler.cumulative_delta = True
    assert handler.cumulative is True
    with pytest.warns(DeprecationWarning):
        assert handler.min_delta_mode == "abs"


def test_nan_score_counts_as_no_improvement():
    trainer, handler = _run([1.0, math.nan, math.nan, 5.0], patience=2)
    assert trainer.state.epoch == 3 and handler.best_score == 1.0


def test_state_dict_round_trip_resumes_the_count():
    scores = [1.0, 3.0, 2.0, 2.5, 2.9, 1.0, 1.0]

    def make():
        trainer = Engine(lambda e, b: b)
        handler = EarlyStopping(3, lambda eng: scores[eng.state.epoch - 1], trainer)
        handler.attach(trainer, Events.EPOCH_COMPLETED, reset_engine=trainer)
        return trainer, handler

    full, _ = make()
    full.run([0, 0], max_epochs=len(scores))

    first, first_handler = make()
    first.run([0, 0], max_epochs=4)  # "crash" after epoch 4, with a count of 2
    saved_engine, saved_handler = first.state_dict(), first_handler.state_dict()
    assert saved_handler == {"counter": 2, "best_score": 3.0, "threshold_mode": "abs"}

    resumed, resumed_handler = make()
    resumed_handler.load_state_dict(saved_handler)
    resumed.load_state_dict(saved_engine)
    resumed.run([0, 0], max_epochs=len(scores))
    assert resumed.state.epoch == full.state.epoch == 5

    # Negative control: without the handler's state the resumed run stops later.
    control, _ = make()
    control.load_state_dict(saved_engine)
    control.run([0, 0], max_epochs=len(scores))
    assert control.state.epoch > full.state.epoch


def test_attach_registers_the_reset_on_the_trainer_only():
    trainer, evaluator = Engine(lambda e, b: b), Engine(lambda e, b: b)
    on_trainer = EarlyStopping(2, lambda e: 1.0, trainer)
    on_trainer.attach(trainer)  # the trainer's own STARTED: as in Ignite
    assert trainer.has_event_handler(on_trainer.reset, Events.STARTED)
    on_evaluator = EarlyStopping(2, lambda e: 1.0, trainer)
    on_evaluator.attach(evaluator)  # not the evaluator's STARTED: it would undo every check
    assert not evaluator.has_event_handler(on_evaluator.reset)
    evaluator.run([0], max_epochs=1)  # the first score
    evaluator.run([0], max_epochs=1)  # no improvement: counted, not reset by this run
    assert on_evaluator.counter == 1 and on_evaluator.best_score == 1.0


def test_attach_reset_on_a_fresh_run():
    trainer = Engine(lambda e, b: b)
    handler = EarlyStopping(5, lambda e: 1.0, trainer)
    handler.attach(trainer, Events.EPOCH_COMPLETED, reset_engine=trainer)
    handler.counter, handler.best_score = 4, 9.0
    trainer.run([0], max_epochs=1)
    assert handler.best_score == 1.0 and handler.counter == 0  # reset at STARTED, then one check


def test_argument_errors():
    trainer = Engine(lambda e, b: b)
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(0, lambda e: 0.0, trainer)
    with pytest.raises(TypeError, match="score_function"):
        EarlyStopping(1, 3.0, trainer)
    with pytest.raises(TypeError, match="trainer"):
        EarlyStopping(1, lambda e: 0.0, object())
    with pytest.raises(ValueError, match="threshold"):
        EarlyStopping(1, lambda e: 0.0, trainer, threshold=-1.0)
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(1, lambda e: 0.0, trainer, mode="up")
    with pytest.raises(ValueError, match="missing"):
        EarlyStopping(1, lambda e: 0.0, trainer).load_state_dict({"counter": 1})
