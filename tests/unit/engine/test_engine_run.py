"""run() continuation semantics (terminate, interrupt, max_epochs changes), against Ignite."""

import ignite.engine as ignite_engine  # the oracle is a test dependency: no silent skip
import pytest
import torch

from distengine.engine import Engine, Events


def _pair():
    return Engine(lambda e, b: b), ignite_engine.Engine(lambda e, b: b)


def _counts(state):
    return state.epoch, state.iteration, state.max_epochs, state.max_iters


def test_continue_finished_run_with_more_epochs():
    for eng in _pair():
        eng.run(range(4), max_epochs=5)
        st = eng.run(range(4), max_epochs=7)
        assert _counts(st) == (7, 28, 7, None)


def test_rerun_finished_run_restarts():
    ours, theirs = _pair()
    for eng in (ours, theirs):
        started = []
        eng.add_event_handler(
            Events.STARTED if eng is ours else ignite_engine.Events.STARTED,
            lambda e: started.append(e.state.iteration),
        )
        eng.run(range(3), max_epochs=2)
        eng.run(range(3), max_epochs=2)
        assert started == [0, 0] and eng.state.iteration == 6


def test_errors_for_invalid_continuations():
    eng = Engine(lambda e, b: b)
    eng.run(range(3), max_epochs=3)
    with pytest.raises(ValueError, match="greater than or equal to the start epoch"):
        eng.run(range(3), max_epochs=2)
    with pytest.raises(ValueError, match="max_epochs to max_iters"):
        eng.run(range(3), max_iters=20)
    with pytest.raises(ValueError, match="mutually exclusive"):
        Engine(lambda e, b: b).run(range(3), max_epochs=2, max_iters=3)
    with pytest.raises(ValueError, match="epoch_length should be provided if data is None"):
        Engine(lambda e, b: b).run(None, max_epochs=2)
    with pytest.raises(ValueError, match="empty"):
        Engine(lambda e, b: b).run([], max_epochs=2)
    with pytest.raises(TypeError, match="iterable"):
        Engine(lambda e, b: b).run(3)


def test_terminate_then_run_continues():
    ours, theirs = _pair()
    results = []
    for eng, ev in ((ours, Events), (theirs, ignite_engine.Events)):
        seen = []
        eng.add_event_handler(ev.ITERATION_COMPLETED(once=5), lambda e: e.terminate())
        eng.add_event_handler(ev.ITERATION_COMPLETED, lambda e: seen.append(e.state.iteration))
        eng.run(range(4), max_epochs=3)
        first = _counts(eng.state)
        eng.run(range(4), max_epochs=3)
        results.append((first, _counts(eng.state), seen))
    assert results[0] == results[1]


def test_interrupt_and_resume_in_place():
    ours, theirs = _pair()
    traces = []
    for eng, ev in ((ours, Events), (theirs, ignite_engine.Events)):
        log = []
        eng.add_event_handler(ev.ITERATION_COMPLETED(every=3), lambda e: e.interrupt())
        for name in ("STARTED", "EPOCH_STARTED", "EPOCH_COMPLETED", "COMPLETED", "INTERRUPT"):
            eng.add_event_handler(
                getattr(ev, name), lambda e, n=name: log.append((n, e.state.iteration))
            )
        eng.add_event_handler(ev.ITERATION_COMPLETED, lambda e: log.append(("it", e.state.batch)))
        runs = 0
        while runs < 10:
            eng.run(range(4), max_epochs=2)
            runs += 1
            if eng.state.iteration == 8 and log[-1][0] == "COMPLETED":
                break
        traces.append((log, runs))
    assert traces[0] == traces[1]


def test_max_iters_mid_epoch():
    eng = Engine(lambda e, b: b)
    seen = []
    eng.add_event_handler(Events.TERMINATE, lambda e: seen.append("T"))
    st = eng.run(range(4), max_iters=6)
    assert (st.epoch, st.iteration, seen) == (2, 6, ["T"])


def test_terminate_then_run_matches_ignites_documented_output():
    """Ignite's terminate() docstring: after terminating at iteration 14 (epoch 2), run()
    goes on with epoch 3 from the first batch."""
    for eng_cls, ev in ((Engine, Events), (ignite_engine.Engine, ignite_engine.Events)):
        seen = []
        eng = eng_cls(lambda e, b: seen.append((e.state.epoch, e.state.iteration, b)))
        eng.add_event_handler(ev.ITERATION_COMPLETED(once=14), lambda e: e.terminate())
        eng.run(range(10), max_epochs=4)
        assert seen[-1] == (2, 14, 3)
        eng.run(range(10), max_epochs=4)
        assert seen[14:18] == [(3, 15, 0), (3, 16, 1), (3, 17, 2), (3, 18, 3)]


def test_max_iters_continuation_with_data_without_len():
    """max_epochs derived from max_iters (data without len) does not block a later
    run(max_iters=larger)."""

    class NoLen:
        def __iter__(self):
            return iter(range(4))

    eng = Engine(lambda e, b: b)
    eng.run(NoLen(), max_iters=6)
    assert (eng.state.iteration, eng.state.epoch_length, eng.state.max_epochs) == (6, 4, 2)
    eng.run(NoLen(), max_iters=9)
    assert (eng.state.iteration, eng.state.max_iters, eng.state.max_epochs) == (9, 9, 3)


_LAUNCH = """
import sys, torch
from distengine.distributed import auto_dataloader
from distengine.engine import Engine, Events
if sys.argv[1] == "seeded":
    torch.manual_seed(0)
seen = []
eng = Engine(lambda e, b: seen.extend(b[0].tolist()))
eng.run(auto_dataloader(torch.utils.data.TensorDataset(torch.arange(32)), batch_size=8), max_epochs=2)
print(eng.state.seed, seen)
"""


def test_run_without_seed_follows_torch_global_seeding_across_launches():
    import subprocess
    import sys

    # the four launches are independent: side by side, each bounded, all ended on the way out
    modes = ["seeded", "seeded", "unseeded", "unseeded"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode in modes
    ]
    try:
        outs = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 0, stderr
            outs.append(stdout)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    seeded, unseeded = outs[:2], outs[2:]
    assert seeded[0] == seeded[1]  # torch.manual_seed(0) fixes the data order
    assert seeded[0].split()[0] == "0"  # the run's seed is torch's initial seed
    assert unseeded[0] != unseeded[1]  # no global seeding: a fresh order per launch


def test_run_seed_does_not_draw_from_the_global_generator():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    Engine(lambda e, b: None).run(range(3), max_epochs=1)
    assert torch.equal(torch.rand(3), expected)
