"""Engine behaviours that Ignite code relies on (each checked by Ignite v0.5.5's own suite)."""

import pytest

from distengine.engine import Engine, Events, State


def test_events_print_and_compare_by_name():
    assert str(Events.STARTED) == "Events.STARTED"
    assert repr(Events.ITERATION_COMPLETED) == "Events.ITERATION_COMPLETED"
    assert Events.ITERATION_COMPLETED == "ITERATION_COMPLETED"
    assert Events.ITERATION_COMPLETED(every=3) == "ITERATION_COMPLETED"
    assert Events.ITERATION_COMPLETED(every=3) == Events.ITERATION_COMPLETED
    assert "filter=" in str(Events.ITERATION_COMPLETED(every=3))
    with pytest.raises(
        TypeError, match="Argument event should be Events or CallableEventWithFilter"
    ):
        Events.STARTED | "abc"


def test_process_function_and_filter_signatures_checked_when_given():
    with pytest.raises(ValueError, match="must be given a processing function"):
        Engine(None)
    for bad in (lambda: None, lambda batch: None, lambda engine, batch, extra: None):
        with pytest.raises(ValueError, match="takes parameters .+ but will be called with"):
            Engine(bad)
    with pytest.raises(ValueError, match="event_filter"):
        Events.ITERATION_COMPLETED(event_filter=lambda engine: True)
    Events.ITERATION_COMPLETED(event_filter=lambda engine, event: True)  # fine


def test_reassigning_the_dataloader_at_stop_iteration_continues_on_it():
    def finite():
        yield from range(11)

    seen = []
    eng = Engine(lambda e, b: seen.append(b))

    @eng.on(Events.DATALOADER_STOP_ITERATION)
    def restart():
        eng.state.dataloader = finite()

    state = eng.run(finite(), max_epochs=5)
    assert (state.epoch, state.iteration) == (5, 55) and seen == list(range(11)) * 5


def test_set_data_switches_the_data_at_the_next_batch():
    seen = []
    eng = Engine(lambda e, b: seen.append(b))
    eng.add_event_handler(Events.ITERATION_COMPLETED(once=2), lambda e: e.set_data([10, 20, 30]))
    eng.run([1, 2, 3], max_epochs=2)
    assert seen == [1, 2, 10, 20, 30, 10]


def test_interrupt_raises_when_interrupt_resume_is_disabled(monkeypatch):
    monkeypatch.setattr(Engine, "interrupt_resume_enabled", False)
    eng = Engine(lambda e, b: None)
    with pytest.raises(RuntimeError, match="interrupt_resume_enabled"):
        eng.interrupt()


def test_a_subclass_overriding_fire_event_sees_every_event():
    class Recording(Engine):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.fired = []

        def _fire_event(self, event_name, *args):
            self.fired.append(event_name.name)
            return super()._fire_event(event_name, *args)

    eng = Recording(lambda e, b: None)
    eng.run([1, 2], max_epochs=1)
    assert eng.fired == [
        "STARTED",
        "EPOCH_STARTED",
        *["GET_BATCH_STARTED", "GET_BATCH_COMPLETED", "ITERATION_STARTED", "ITERATION_COMPLETED"]
        * 2,
        "EPOCH_COMPLETED",
        "COMPLETED",
    ]


def test_should_flags_are_derived_from_the_requests():
    eng = Engine(lambda e, b: None)
    assert not eng.should_terminate and not eng.should_terminate_single_epoch
    eng.terminate(skip_completed=True)
    assert eng.should_terminate == "skip_completed"
    eng.should_terminate = False
    assert not eng.should_terminate
    eng.terminate_epoch()
    assert eng.should_terminate_single_epoch is True
    eng.should_interrupt = True
    assert eng.should_interrupt


def test_state_repr_is_ignites():
    text = repr(State(iteration=3, custom="x"))
    assert text.startswith("State:\n") and "\titeration: 3\n" in text and "\tcustom: x\n" in text
    assert "\tmetrics: <class 'dict'>\n" in text


def test_check_arg_is_ignites_private_helper_used_by_the_trainer():
    """Ignite's tests import ``_check_arg`` from the engine package; the trainer uses it."""
    import torch

    from distengine.engine import _check_arg, create_supervised_trainer

    assert _check_arg(False, False, None, False) == (None, None)
    mode, scaler = _check_arg(False, False, "amp", True, "cpu")
    assert mode == "amp" and isinstance(scaler, torch.amp.GradScaler)
    given = torch.amp.GradScaler("cpu")
    assert _check_arg(False, False, "amp", given) == ("amp", given)
    with pytest.raises(ValueError, match="MPS device"):
        _check_arg(False, True, "amp", False)
    with pytest.raises(RuntimeError, match="no XLA support"):
        _check_arg(True, False, None, False)
    with pytest.raises(ValueError, match="amp_mode must be None or 'amp', got 'apex'"):
        _check_arg(False, False, "apex", False)
    with pytest.raises(
        ValueError,
        match="scaler argument is .*, but amp_mode is None: a scaler needs amp_mode='amp'",
    ):
        _check_arg(False, False, None, True)

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = create_supervised_trainer(
        model, opt, torch.nn.functional.mse_loss, device="cpu", amp_mode="amp", scaler=True
    )
    assert isinstance(trainer.state.scaler, torch.amp.GradScaler)
    with pytest.raises(ValueError, match="MPS device"):
        create_supervised_trainer(
            model, opt, torch.nn.functional.mse_loss, device="mps", amp_mode="amp"
        )
    with pytest.raises(RuntimeError, match="XLA"):
        create_supervised_trainer(model, opt, torch.nn.functional.mse_loss, device="xla:0")


def test_tpu_and_apex_step_factories_say_they_are_not_supported():
    import torch

    from distengine.engine import supervised_training_step_apex, supervised_training_step_tpu

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="does not support XLA"):
        supervised_training_step_tpu(model, opt, torch.nn.functional.mse_loss, "xla")
    with pytest.raises(
        RuntimeError, match="apex AMP is not supported; use supervised_training_step_amp"
    ):
        supervised_training_step_apex(model, opt, torch.nn.functional.mse_loss, "cuda")
