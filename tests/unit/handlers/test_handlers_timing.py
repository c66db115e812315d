"""Timer and ThroughputLogger, timed with a fake clock so the values are exact."""

import pytest
import torch

from distengine.engine import Engine, Events
from distengine.handlers.throughput import ThroughputLogger
from distengine.handlers.timer import Timer


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def test_timer_total_pause_resume():
    clock = FakeClock()
    t = Timer(clock=clock)
    clock.advance(2.0)
    assert t.value() == 2.0
    t.pause()
    clock.advance(5.0)  # not counted while paused
    assert t.value() == 2.0 and not t.running
    t.resume()
    clock.advance(1.5)
    assert t.value() == 3.5
    t.reset()
    assert t.value() == 0.0 and t.step_count == 0


def test_timer_average_divides_by_steps():
    clock = FakeClock()
    t = Timer(average=True, clock=clock)
    assert t.value() == 0.0  # no step yet: divides by 1
    for _ in range(4):
        clock.advance(0.25)
        t.step()
    assert t.step_count == 4 and t.value() == pytest.approx(0.25)


def test_timer_attached_measures_process_time_only():
    clock = FakeClock()

    def step(engine, batch):
        clock.advance(1.0)  # the work
        return batch

    trainer = Engine(step)
    timer = Timer(average=True, clock=clock).attach(
        trainer,
        start=Events.EPOCH_STARTED,
        resume=Events.ITERATION_STARTED,
        pause=Events.ITERATION_COMPLETED,
        step=Events.ITERATION_COMPLETED,
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: clock.advance(0.5))  # idle
    epoch_timer = Timer(clock=clock).attach(
        trainer, start=Events.EPOCH_STARTED, pause=Events.EPOCH_COMPLETED
    )
    trainer.run([0, 0, 0], max_epochs=2)
    assert timer.step_count == 3  # reset at the second epoch's start
    assert timer.value() == pytest.approx(1.0)
    assert epoch_timer.value() == pytest.approx(3 * 1.5)


def test_timer_rejects_non_callable_clock():
    with pytest.raises(TypeError, match="clock"):
        Timer(clock=3.0)


def _throughput_run(batches, padding=None, batch_size_fn=None, max_epochs=2):
    """Each iteration takes 1 fake second; returns the trainer and the logger."""
    clock = FakeClock()

    def step(engine, batch):
        clock.advance(1.0)
        return batch

    trainer = Engine(step)
    if padding is not None:
        # Stands in for the engine's padding record (set per batch by a padded sampler).
        trainer.add_event_handler(
            Events.ITERATION_STARTED,
            lambda e: setattr(e.state, "batch_padding", padding[e.state.iteration - 1]),
        )
    tp = ThroughputLogger(batch_size_fn=batch_size_fn, clock=clock).attach(trainer)
    seen = []
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: seen.append(e.state.metrics["samples_per_sec"])
    )
    trainer.run(batches, max_epochs=max_epochs)
    return tp, seen


def test_throughput_counts_samples_per_second():
    batches = [torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(2, 3)]
    tp, seen = _throughput_run(batches)
    samples = sum(b.shape[0] for b in batches)
    assert seen == [pytest.approx(samples / len(batches))] * 2  # 1 s per iteration
    assert tp.value == seen[-1]


def test_throughput_skips_padding_and_reads_nested_batches():
    batches = [(torch.zeros(4, 3), torch.zeros(4)), {"x": torch.zeros(4, 3)}]
    _, seen = _throughput_run(batches, padding=[0, 3], max_epochs=1)
    assert seen == [pytest.approx((4 + 1) / 2)]


def test_throughput_custom_batch_size_and_errors():
    _, seen = _throughput_run([[1, 2, 3], [4, 5, 6]], batch_size_fn=len, max_epochs=1)
    assert seen == [pytest.approx(3.0)]
    with pytest.raises(TypeError, match="batch_size_fn"):
        _throughput_run(["no tensor here"], max_epochs=1)
    with pytest.raises(ValueError, match="name"):
        ThroughputLogger(name="")


def test_time_limit_terminates_after_the_budget():
    from distengine.handlers import TimeLimit

    now = [100.0]
    handler = TimeLimit(limit_sec=10, clock=lambda: now[0])

    def step(engine, batch):
        now[0] += 3.0  # every iteration "takes" 3 s

    trainer = Engine(step)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, handler)
    trainer.run(list(range(20)), max_epochs=1)
    assert trainer.state.iteration == 4  # 12 s > 10 s after the 4th iteration
    with pytest.raises(ValueError, match="positive integer"):
        TimeLimit(0)
    with pytest.raises(TypeError, match="should be an integer"):
        TimeLimit(1.5)
    with pytest.raises(TypeError, match="clock should be a callable"):
        TimeLimit(10, clock=5.0)
