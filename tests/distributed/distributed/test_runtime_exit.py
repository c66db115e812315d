"""A finished DDP job exits 0 every time (docs/internals.md, "Platform facts": exit-time abort on torch 2.13).

The abort comes from gloo worker threads releasing a backward-pass work after interpreter
finalization started, so besides requiring exit status 0 on every run, each rank checks
that those threads are gone once distengine has finalized: that check is deterministic,
and the negative control (release of the DDP module disabled) shows it can fail.
"""

import re
import sys
from pathlib import Path

import pytest
from helpers import child_env, run_processes

pytestmark = pytest.mark.timeout(150)

SCRIPT = str(Path(__file__).parent / "scripts" / "ddp_exit_runs.py")
THREADS_LEFT = 3  # ddp_exit_runs.py's status when gloo threads outlived finalize


def _runs(*args: str, timeout: float) -> list[list[int]]:
    (result,) = run_processes([[sys.executable, SCRIPT, *args]], [child_env()], timeout)
    assert not result.timed_out and result.returncode == 0, result.stdout + result.stderr
    return [
        [int(c) for c in m.split(",")]
        for m in re.findall(r"run \d+: \[([-\d, ]+)\]", result.stdout)
    ]


@pytest.mark.skipif(sys.platform != "linux", reason="reads thread names from /proc")
def test_ddp_job_exits_cleanly_every_time():
    statuses = _runs("10", timeout=120)
    assert statuses == [[0, 0]] * 10


@pytest.mark.skipif(sys.platform != "linux", reason="reads thread names from /proc")
def test_thread_check_fails_without_releasing_ddp():
    assert _runs("1", "--no-release", timeout=60) == [[THREADS_LEFT, THREADS_LEFT]]
