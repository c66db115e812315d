"""Failure propagation: an exception on one rank ends every rank, non-zero, in bounded time.

Two launchers are covered here (spawn is in test_runtime.py): plain ``python`` processes
with env:// variables and no launcher at all, where only distengine can release a peer
blocked in a collective, and ``torchrun --standalone``. The failing rank prints
``FAILING_AT=<time>`` just before failing; each test measures when the last rank ended.
"""

import re
from pathlib import Path

import pytest
from helpers import run_ranks, run_torchrun

from distengine.distributed.watchdog import FAILURE_EXIT_CODE

pytestmark = pytest.mark.timeout(120)

FAILING_SCRIPT = str(Path(__file__).parent / "scripts" / "failing_rank.py")
FAILURE_TIMEOUT = 3.0
ENV = {"DISTENGINE_FAILURE_TIMEOUT": str(FAILURE_TIMEOUT)}
# Process exit and observation on a loaded 2-core machine; the bound itself is FAILURE_TIMEOUT.
SLACK = 2.0


def _failed_at(stderr: str) -> float:
    found = re.search(r"FAILING_AT=([\d.]+)", stderr)
    assert found, stderr
    return float(found.group(1))


@pytest.mark.parametrize(
    ("mode", "world", "failing"),
    [
        ("raise", 3, 1),  # uncaught exception on a middle rank; the others sit in all_reduce
        ("stuck", 2, 0),  # the store's host reports, then hangs: only watchdogs end the job
    ],
)
def test_plain_ranks_all_end_when_one_fails(mode, world, failing):
    results = run_ranks([FAILING_SCRIPT, mode, "3", str(failing)], world, timeout=60, extra_env=ENV)
    stderrs = "\n".join(f"--- rank {r.rank}:\n{r.stderr}" for r in results)
    assert not any(r.timed_out for r in results), stderrs
    assert [r.returncode for r in results] == [FAILURE_EXIT_CODE] * world, stderrs
    culprit = results[failing].stderr
    assert "Traceback (most recent call last)" in culprit
    assert f"ValueError: injected failure on rank {failing} at iteration 3" in culprit
    elapsed = max(r.ended_at for r in results) - _failed_at(culprit)
    print(f"plain python/{mode}/{world} ranks: last rank ended {elapsed:.2f} s after the failure")
    assert elapsed < FAILURE_TIMEOUT + SLACK, stderrs
    if mode == "stuck":
        # The failing rank kept its sockets open, so the peers' collective never errored:
        # their watchdog ended them, saying who failed and why; the failing rank's own
        # watchdog ended it at the bound.
        for r in results:
            if r.rank != failing:
                assert f"rank {failing} failed (ValueError: injected failure" in r.stderr, stderrs
        assert (
            f"rank {failing} reported a failure and is still running at the failure timeout"
            in culprit
        )


@pytest.mark.slow
def test_torchrun_job_ends_when_one_rank_fails():
    result = run_torchrun(
        [FAILING_SCRIPT, "raise", "3"], nproc_per_node=2, timeout=90, extra_env=ENV
    )
    assert not result.timed_out, result.stderr
    assert result.returncode != 0
    assert "ValueError: injected failure on rank 1 at iteration 3" in result.stderr
    elapsed = result.ended_at - _failed_at(result.stderr)
    print(f"torchrun/raise/2 ranks: torchrun exited {elapsed:.2f} s after the failure")
    assert elapsed < FAILURE_TIMEOUT + SLACK, result.stderr
