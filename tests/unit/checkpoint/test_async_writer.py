"""The background checkpoint writer on its own (``checkpoint.async_writer.BackgroundWriter``):
one job at a time on a thread of its own, errors handed back by ``wait``, a thread the
interpreter waits for, and a lowered CPU priority. Synchronised with events, no sleeps."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from distengine.checkpoint.async_writer import BackgroundWriter

TIMEOUT = 30  # seconds; only reached if the writer is broken


def _gated_job(record):
    """A job that records its thread and then waits until the test releases it."""
    started, release = threading.Event(), threading.Event()

    def job():
        record["thread"] = threading.current_thread()
        started.set()
        assert release.wait(TIMEOUT)
        record["done"] = True

    return job, started, release


def test_the_job_runs_on_a_non_daemon_writer_thread_and_wait_joins_it():
    record = {}
    job, started, release = _gated_job(record)
    w = BackgroundWriter()
    assert not w.busy
    w.submit(job)
    assert started.wait(TIMEOUT)
    thread = record["thread"]
    assert thread is not threading.current_thread()
    assert thread.name == "distengine-ckpt-writer"
    assert not thread.daemon  # the interpreter waits for a write in flight at exit
    assert w.busy and "done" not in record  # submit returned while the job runs
    release.set()
    assert w.wait() is None
    assert record["done"] is True  # wait returned only once the job had ended
    assert not thread.is_alive()
    assert not w.busy


def test_wait_without_a_job_returns_none():
    w = BackgroundWriter()
    assert w.wait() is None
    assert not w.busy


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt(), SystemExit(3)])
def test_an_error_of_the_job_is_returned_once_by_wait(error):
    def job():
        raise error

    w = BackgroundWriter()
    w.submit(job)
    assert w.wait() is error  # the exception object itself, any BaseException
    assert w.wait() is None  # reported once, then forgotten
    done = []
    w.submit(lambda: done.append(1))  # the writer is usable again
    assert w.wait() is None and done == [1]


def test_a_second_submit_before_wait_is_refused_and_the_first_job_still_runs():
    record = {}
    job, started, release = _gated_job(record)
    w = BackgroundWriter()
    w.submit(job)
    assert started.wait(TIMEOUT)
    second = []
    with pytest.raises(AssertionError, match="wait"):
        w.submit(lambda: second.append(1))
    release.set()
    assert w.wait() is None
    assert record["done"] is True and second == []


def test_jobs_run_one_after_another_in_submission_order():
    order = []
    w = BackgroundWriter()
    for i in range(3):
        w.submit(lambda i=i: order.append(i))
        assert w.wait() is None
    assert order == [0, 1, 2]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread policy is Linux-only")
def test_the_writer_and_the_threads_it_starts_run_as_idle_work_and_the_caller_does_not():
    mine = os.sched_getscheduler(threading.get_native_id())
    seen = {}

    def policy(key):
        seen[key] = os.sched_getscheduler(threading.get_native_id())

    def job():
        policy("writer")
        helper = threading.Thread(target=policy, args=("helper",))  # e.g. the SHA-256 thread
        helper.start()
        helper.join()

    w = BackgroundWriter()
    w.submit(job)
    assert w.wait() is None
    # Switching one's own thread to SCHED_IDLE is always permitted; new threads inherit it.
    assert seen == {"writer": os.SCHED_IDLE, "helper": os.SCHED_IDLE}
    assert os.sched_getscheduler(threading.get_native_id()) == mine != os.SCHED_IDLE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux-only")
def test_where_sched_idle_is_refused_the_writer_runs_at_nice_19(monkeypatch):
    def refuse(*args):
        raise PermissionError("refused by a seccomp profile")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = {}

    def job():
        tid = threading.get_native_id()
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, tid)
        seen["policy"] = os.sched_getscheduler(tid)

    w = BackgroundWriter()
    w.submit(job)
    assert w.wait() is None
    assert seen == {"nice": 19, "policy": os.SCHED_OTHER}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine
