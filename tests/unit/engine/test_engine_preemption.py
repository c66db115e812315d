"""Preemption at world size 1: a signal becomes a stop after the iteration, a save, exit 75."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from distengine.engine import Engine, Events
from distengine.engine.preemption import PREEMPT_EXIT_CODE, Preempted


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_stops_after_iteration_and_calls_savers(sig):
    events, saves = [], []
    eng = Engine(lambda e, b: b)

    @eng.on(Events.ITERATION_STARTED(once=5))
    def send(engine):
        os.kill(os.getpid(), sig)

    eng.register_preemption_saver(lambda e: saves.append(e.state.iteration))
    for name in ("TERMINATE", "COMPLETED", "EPOCH_COMPLETED"):
        eng.add_event_handler(
            getattr(Events, name), lambda e, n=name: events.append((n, e.state.iteration))
        )
    with pytest.raises(Preempted) as info:
        eng.run(range(4), max_epochs=3)
    assert info.value.code == PREEMPT_EXIT_CODE and info.value.signum == sig
    # the request came in ITERATION_STARTED of iteration 5: at world size 1 it acts at once
    assert saves == [5] and events == [("EPOCH_COMPLETED", 4), ("TERMINATE", 5)]
    assert signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler)


def test_uncaught_preemption_exits_with_documented_status(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent("""
        import os, signal
        from distengine.engine import Engine, Events
        eng = Engine(lambda e, b: b)
        eng.add_event_handler(Events.ITERATION_COMPLETED(once=3), lambda: os.kill(os.getpid(), signal.SIGTERM))
        eng.register_preemption_saver(lambda e: print("saved at", e.state.iteration, flush=True))
        eng.run(range(10))
        print("not reached")
    """)
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == PREEMPT_EXIT_CODE, proc.stderr
    assert "saved at 3" in proc.stdout and "not reached" not in proc.stdout


_USER_INIT_RAN = []


def _user_init(worker_id):
    _USER_INIT_RAN.append(worker_id)


class _SignalDisposition(__import__("torch").utils.data.Dataset):
    """Reports, from inside a DataLoader worker, how SIGTERM and SIGUSR1 are handled there."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        ignored_term = signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        ignored_usr1 = signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
        return int(ignored_term) + 2 * int(ignored_usr1) + 4 * int(bool(_USER_INIT_RAN))


def test_auto_dataloader_workers_ignore_preemption_signals():
    from distengine.distributed import auto_dataloader

    loader = auto_dataloader(
        _SignalDisposition(), batch_size=2, num_workers=2, worker_init_fn=_user_init
    )
    seen = [v for batch in loader for v in batch.tolist()]
    assert seen == [7, 7, 7, 7]  # both signals ignored in every worker, and the user's init ran
    assert signal.getsignal(signal.SIGTERM) != signal.SIG_IGN  # not in the main process
