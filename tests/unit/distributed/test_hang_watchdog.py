"""The watchdog's hang detection, parent watch and settings, in one process (HashStore).

Two watchdogs share a HashStore as two ranks would share the job's store; each watches its
own in-flight marker (what the agreement sets around its collective). Exits are recorded
instead of ending the test process. The multi-process behaviour (real ranks, torchrun) is in
tests/distributed/distributed/ (test_hang_report.py, test_orphans.py).
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time

import pytest
import torch.distributed as dist

import distengine.distributed as idist
from distengine.distributed import hangs
from distengine.distributed.env import (
    DEFAULT_HANG_TIMEOUT,
    hang_timeout_from_env,
    launcher_pid,
)
from distengine.distributed.watchdog import (
    FAILURE_EXIT_CODE,
    FailureWatchdog,
    ParentWatch,
    first_failure,
)

pytestmark = pytest.mark.timeout(60)


class _Exits:
    def __init__(self) -> None:
        self.codes: list[int] = []
        self.done = threading.Event()

    def __call__(self, code: int) -> None:
        self.codes.append(code)
        self.done.set()


def _dog(store, rank, in_flight, exits, hang_timeout=0.5, **kw) -> FailureWatchdog:
    return FailureWatchdog(
        store,
        rank,
        2,
        failure_timeout=4.0,
        exit_fn=exits,
        hang_timeout=hang_timeout,
        in_flight=in_flight,
        **kw,
    )


def _sleepy_handler(stop: threading.Event) -> None:
    stop.wait(30)  # the frame the report must show


def test_a_rank_that_does_not_arrive_is_named_in_one_report(capfd):
    store = dist.HashStore()
    waiting, asleep = hangs.InFlight(), hangs.InFlight()
    stop = threading.Event()
    sleeper = threading.Thread(target=_sleepy_handler, args=(stop,), daemon=True)
    sleeper.start()
    asleep.thread = sleeper.ident  # rank 1's engine thread: asleep, in no collective
    waiting.seq, waiting.name = 7, "agreement"  # rank 0 waits in the agreement
    ex0, ex1 = _Exits(), _Exits()
    d0, d1 = _dog(store, 0, waiting, ex0), _dog(store, 1, asleep, ex1)
    t0 = time.monotonic()
    d0.start()
    d1.start()
    try:
        assert ex0.done.wait(10) and ex1.done.wait(10)
    finally:
        stop.set()
        d0.stop()
        d1.stop()
    assert ex0.codes == ex1.codes == [FAILURE_EXIT_CODE]
    assert time.monotonic() - t0 < 0.5 + 4.0
    err = capfd.readouterr().err
    assert err.count("hang report:") == 1, err
    assert "rank 0 waited" in err and "in 'agreement'" in err
    assert "1 of 2 ranks did not arrive: rank 1" in err
    assert "in _sleepy_handler" in err and "stop.wait(30)" in err
    assert "rank 0 failed (HangError: ranks [1] did not reach 'agreement'" in err
    record = first_failure(store)
    assert record.rank == 0 and record.message.startswith("HangError: ranks [1]")
    assert "hang report:" in record.traceback  # spawn() raises the report as the cause


def test_collectives_that_keep_completing_are_not_a_hang():
    store = dist.HashStore()
    w = hangs.InFlight()
    exits = _Exits()
    dog = _dog(store, 0, w, exits, hang_timeout=0.3)
    dog.start()
    try:
        deadline = time.monotonic() + 1.5  # five times the timeout, always in a collective
        while time.monotonic() < deadline:
            w.seq += 1
            w.name = "agreement"
            time.sleep(0.05)
        w.name = None
        time.sleep(0.6)  # and then out of any collective for longer than the timeout
    finally:
        dog.stop()
    assert exits.codes == []
    assert not store.check([hangs.HANG_AT])


class _Work:
    """The one member of a collective's work object that the watchdog reads."""

    def __init__(self) -> None:
        self.done = False

    def is_completed(self) -> bool:
        return self.done


def test_a_started_agreement_is_waited_in_only_until_its_work_completes():
    w = hangs.InFlight()
    work = _Work()
    w.seq, w.name, w.work = 3, "agreement", work  # what start_agreement leaves
    assert w.waiting_in() == "agreement"
    assert hangs.where_record(0, in_flight=w)["collective"]["name"] == "agreement"
    work.done = True  # every rank started it: nothing is waited for any more
    assert w.waiting_in() is None
    assert hangs.where_record(0, in_flight=w)["collective"] is None
    # ... for longer than the timeout: not a hang
    store = dist.HashStore()
    exits = _Exits()
    dog = _dog(store, 0, w, exits, hang_timeout=0.3)
    dog.start()
    time.sleep(0.8)
    dog.stop()
    assert exits.codes == []
    assert not store.check([hangs.HANG_AT])
    # a pending one that never completes is one
    w.seq, w.work = 4, _Work()
    dog = _dog(store, 0, w, exits, hang_timeout=0.3)
    dog.start()
    try:
        assert exits.done.wait(10)
    finally:
        dog.stop()
    assert exits.codes == [FAILURE_EXIT_CODE]


def test_hang_detection_off():
    store = dist.HashStore()
    w = hangs.InFlight()
    w.seq, w.name = 1, "agreement"
    exits = _Exits()
    dog = _dog(store, 0, w, exits, hang_timeout=None)
    dog.start()
    time.sleep(0.5)
    dog.stop()
    assert exits.codes == []


def test_compose_report_marks_silent_ranks_and_other_collectives():
    me = hangs.where_record(2, waited=12.0, in_flight=_marker("agreement"))
    other = {**me, "rank": 0, "collective": {"name": "checkpoint: all_gather", "waited": 11.0}}
    text, missing = hangs.compose_report(me, {0: other, 1: None, 2: me}, 3, 10.0)
    assert missing == [0, 1]
    assert "2 of 3 ranks did not arrive: rank 0, rank 1" in text.splitlines()[0]
    assert "rank 0 (host" in text and "waits in 'checkpoint: all_gather' instead" in text
    assert "rank 1: no answer" in text
    assert "rank 2 (host" in text and "is waiting in 'agreement' for 12.0 s" in text


def _marker(name):
    w = hangs.InFlight()
    w.seq, w.name, w.thread = 1, name, threading.get_ident()
    return w


def test_status_providers_are_weak_and_errors_are_reported():
    class Eng:
        def status(self):
            return {
                "engine": "weakly-held",
                "epoch": 2,
                "iteration": 9,
                "last_event": "GET_BATCH_STARTED",
            }

    def broken():
        raise RuntimeError("no")

    e = Eng()
    idist.register_status_provider(e.status)
    idist.register_status_provider(broken)
    try:
        status = hangs.current_status()
        assert {
            "engine": "weakly-held",
            "epoch": 2,
            "iteration": 9,
            "last_event": "GET_BATCH_STARTED",
        } in status
        assert {"status_error": "RuntimeError: no"} in status
        del e
        gc.collect()
        assert not any(s.get("engine") == "weakly-held" for s in hangs.current_status())
    finally:
        idist.unregister_status_provider(broken)
    with pytest.raises(TypeError):
        idist.register_status_provider(42)


def test_watch_collective_marks_and_unmarks():
    before = hangs.IN_FLIGHT.seq
    with idist.watch_collective("mine"):
        assert hangs.IN_FLIGHT.name == "mine" and hangs.IN_FLIGHT.seq == before + 1
    assert hangs.IN_FLIGHT.name is None
    with pytest.raises(ValueError):
        with idist.watch_collective(""):
            pass


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, DEFAULT_HANG_TIMEOUT),
        ("", DEFAULT_HANG_TIMEOUT),
        ("2.5", 2.5),
        ("0", None),
        ("off", None),
        ("OFF", None),
    ],
)
def test_hang_timeout_setting(monkeypatch, raw, expected):
    if raw is None:
        monkeypatch.delenv("DISTENGINE_HANG_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("DISTENGINE_HANG_TIMEOUT", raw)
    assert hang_timeout_from_env() == expected


@pytest.mark.parametrize("raw", ["-1", "soon", "nan"])
def test_hang_timeout_rejects_nonsense(monkeypatch, raw):
    monkeypatch.setenv("DISTENGINE_HANG_TIMEOUT", raw)
    with pytest.raises(ValueError, match="DISTENGINE_HANG_TIMEOUT"):
        hang_timeout_from_env()


def test_which_launcher_is_watched(monkeypatch):
    for name in ("DISTENGINE_LAUNCHER_PID", "TORCHELASTIC_RUN_ID", "DISTENGINE_STORE_HOSTED"):
        monkeypatch.delenv(name, raising=False)
    assert launcher_pid() is None  # started by hand: its shell may exit first
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    assert launcher_pid() == os.getppid()
    monkeypatch.setenv("DISTENGINE_LAUNCHER_PID", "4242")
    assert launcher_pid() == 4242
    monkeypatch.setenv("DISTENGINE_LAUNCHER_PID", "zero")
    with pytest.raises(ValueError, match="DISTENGINE_LAUNCHER_PID"):
        launcher_pid()


@pytest.mark.parametrize("pidfd", [True, False])
def test_parent_watch_sees_another_process_end(monkeypatch, pidfd):
    if not pidfd:
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        watch = ParentWatch(proc.pid)
        assert not watch.gone()
    finally:
        proc.kill()
        proc.wait()
    assert watch.gone()
    watch.close()
    assert not ParentWatch(os.getppid()).gone()


def test_orphaned_worker_ends(tmp_path):
    """A watchdog whose launcher died ends the process (and says why), at world size 1."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    exits = _Exits()
    dog = FailureWatchdog(None, 0, 1, failure_timeout=4.0, exit_fn=exits, launcher_pid=proc.pid)
    dog.start()
    try:
        time.sleep(0.3)
        assert exits.codes == []
        proc.kill()
        proc.wait()
        assert exits.done.wait(5)
    finally:
        dog.stop()
    assert exits.codes == [FAILURE_EXIT_CODE]
