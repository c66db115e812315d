"""ProgressBar on one process: what the bar shows, captured from tqdm's output."""

import io
import re

import pytest
import torch

from distengine.engine import Engine, Events
from distengine.handlers.progress import ProgressBar


def _last_render(text: str) -> str:
    """The last non-blank line tqdm drew (it redraws with carriage returns)."""
    frames = [f.strip() for f in re.split(r"[\r\n]", text) if f.strip()]
    assert frames, "the bar drew nothing"
    return frames[-1]


def _frames(text: str) -> list[str]:
    return [f.strip() for f in re.split(r"[\r\n]", text) if f.strip()]


def _losses(engine, batch):
    return torch.tensor(float(batch) / 10)


def test_bar_shows_epoch_position_and_output():
    out = io.StringIO()
    trainer = Engine(_losses)
    pbar = ProgressBar(persist=True, file=out, mininterval=0)
    pbar.attach(trainer, output_transform=lambda loss: {"loss": loss})
    trainer.run([1, 2, 3, 4], max_epochs=2)
    frames = _frames(out.getvalue())
    assert any("Epoch [1/2]" in f and "[4/4]" in f for f in frames)
    last = _last_render(out.getvalue())
    assert "Epoch [2/2]" in last and "[4/4]" in last and "100%" in last
    assert "loss=0.4" in last  # the output of the epoch's last iteration
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d\]$", last)  # Ignite's format: elapsed<remaining


def test_bar_shows_chosen_metrics_only():
    out = io.StringIO()
    trainer = Engine(lambda e, b: b)

    @trainer.on(Events.ITERATION_COMPLETED)
    def set_metrics(engine):
        engine.state.metrics.update(acc=engine.state.iteration / 100, hidden=7.0)

    ProgressBar(persist=True, file=out, mininterval=0).attach(trainer, metric_names=["acc"])
    trainer.run([0, 0, 0], max_epochs=1)
    last = _last_render(out.getvalue())
    assert last.startswith("Iteration")  # a single epoch is labelled by iteration
    assert "acc=0.03" in last and "hidden" not in last


def test_missing_metric_warns_and_is_skipped():
    out = io.StringIO()
    trainer = Engine(lambda e, b: b)
    ProgressBar(file=out).attach(trainer, metric_names=["nope"])
    with pytest.warns(UserWarning, match="nope"):
        trainer.run([0], max_epochs=1)


def test_epoch_length_shorter_than_data():
    out = io.StringIO()
    trainer = Engine(lambda e, b: b)
    ProgressBar(persist=True, file=out, mininterval=0).attach(trainer)
    trainer.run(list(range(10)), max_epochs=2, epoch_length=3)
    frames = _frames(out.getvalue())
    assert any("Epoch [2/2]" in f and "[3/3]" in f for f in frames)
    assert not any("[4/3]" in f or "/10]" in f for f in frames)


def test_iterator_without_len_shows_count_without_total():
    out = io.StringIO()
    trainer = Engine(lambda e, b: b)
    ProgressBar(persist=True, file=out, mininterval=0).attach(trainer)
    trainer.run(iter(range(5)), max_epochs=1)
    last = _last_render(out.getvalue())
    assert "[5/?]" in last  # position counted, total unknown


def test_filtered_event_advances_in_steps():
    out = io.StringIO()
    trainer = Engine(lambda e, b: b)
    ProgressBar(persist=True, file=out, mininterval=0).attach(
        trainer, event_name=Events.ITERATION_COMPLETED(every=2)
    )
    trainer.run(list(range(6)), max_epochs=1)
    positions = [m for f in _frames(out.getvalue()) for m in re.findall(r"\[(\d+)/6\]", f)]
    # The bar opens at the first filtered iteration; then only the filtered iterations.
    assert set(positions) == {"2", "4", "6"} and positions[-1] == "6"


def test_epoch_level_bar():
    out = io.StringIO()
    trainer = Engine(lambda e, b: b)
    ProgressBar(persist=True, file=out, mininterval=0).attach(
        trainer, event_name=Events.EPOCH_COMPLETED, closing_event_name=Events.COMPLETED
    )
    trainer.run([0, 0], max_epochs=3)
    assert "[3/3]" in _last_render(out.getvalue())


def test_terminate_closes_bar_where_it_stopped():
    out = io.StringIO()
    trainer = Engine(lambda e, b: b)

    @trainer.on(Events.ITERATION_COMPLETED(once=2))
    def stop(engine):
        engine.terminate()

    pbar = ProgressBar(persist=True, file=out, mininterval=0)
    pbar.attach(trainer)
    trainer.run([0, 0, 0, 0], max_epochs=2)
    assert pbar.pbar is None  # closed at COMPLETED
    assert "[2/4]" in _last_render(out.getvalue())


def test_log_message_goes_to_the_bar_file():
    out = io.StringIO()
    pbar = ProgressBar(file=out)
    pbar.log_message("hello from the handler")
    assert "hello from the handler" in out.getvalue()


def test_attach_rejects_bad_events_and_arguments():
    trainer = Engine(lambda e, b: b)
    with pytest.raises(ValueError, match="should not be a filtered event"):
        ProgressBar().attach(trainer, closing_event_name=Events.EPOCH_COMPLETED(every=2))
    with pytest.raises(ValueError, match="should be called before closing event"):
        ProgressBar().attach(
            trainer,
            event_name=Events.EPOCH_COMPLETED,
            closing_event_name=Events.ITERATION_COMPLETED,
        )
    with pytest.raises(TypeError, match="metric_names"):
        ProgressBar().attach(trainer, metric_names=3)
    with pytest.raises(TypeError, match="bar_format"):
        ProgressBar(bar_format=5)
    with pytest.raises(TypeError, match="state_attributes"):
        ProgressBar().attach(trainer, state_attributes="alpha")
    with pytest.raises(ValueError, match="not in allowed events"):
        ProgressBar().attach(trainer, event_name="not_an_event")


def test_first_frame_shows_position_description_and_values_and_state_attributes():
    """The bar draws lazily (tqdm's mininterval), but its first frame is already complete."""
    out = io.StringIO()
    trainer = Engine(lambda e, b: b)
    trainer.state.alpha = 3.899
    trainer.state.gamma = torch.tensor([21.0, 6.0])
    ProgressBar(file=out, ncols=120).attach(
        trainer, output_transform=lambda x: {"a": x}, state_attributes=["alpha", "gamma"]
    )
    trainer.run([1, 2, 3], max_epochs=2)
    frames = _frames(out.getvalue())
    assert frames[0].startswith("Epoch [1/2]: [1/3]  33%|")
    assert frames[0].endswith(", a=1, alpha=3.9, gamma_0=21, gamma_1=6 [00:00<?]")
