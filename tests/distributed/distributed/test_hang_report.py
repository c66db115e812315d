"""Hang reports: a rank that stops arriving ends the job with one report naming it.

tests/distributed/distributed/scripts/hanging_rank.py makes rank R sleep in an ``ITERATION_COMPLETED``
handler at iteration N while the other ranks wait for it in the engine's per-iteration
agreement. With ``DISTENGINE_HANG_TIMEOUT=T`` the job must end (non-zero) within T plus a
bound, with exactly one report that names the rank that did not arrive, its iteration and
the handler's frame. Without the watchdog's hang detection the job would wait for the
sleeping rank (10 minutes here), and the test would fail at its timeout.
"""

import re
from pathlib import Path

import pytest
from helpers import run_ranks, run_torchrun

from distengine.distributed.watchdog import FAILURE_EXIT_CODE

pytestmark = pytest.mark.timeout(120)

SCRIPT = str(Path(__file__).parent / "scripts" / "hanging_rank.py")
HANG_TIMEOUT = 3.0
# detection (poll) + collecting every rank's answer + the peers' grace + process exits,
# on a shared 2-core machine
BOUND = 6.0
ENV = {"DISTENGINE_HANG_TIMEOUT": str(HANG_TIMEOUT), "DISTENGINE_FAILURE_TIMEOUT": "5"}


def _hang_at(output: str) -> float:
    found = re.search(r"HANG_AT=([\d.]+)", output)
    assert found, output
    return float(found.group(1))


def _one_report(output: str) -> str:
    reports = re.findall(r"^\[distengine\] hang report: .*?(?=^\S|\Z)", output, re.M | re.S)
    assert len(reports) == 1, output
    return reports[0]


@pytest.mark.slow
def test_torchrun_job_with_a_rank_asleep_in_a_handler_ends_with_one_report():
    result = run_torchrun([SCRIPT, "5", "1"], nproc_per_node=2, timeout=90, extra_env=ENV)
    out = result.stderr + result.stdout
    assert not result.timed_out, out
    assert result.returncode != 0
    elapsed = result.ended_at - _hang_at(out)
    print(f"torchrun, 2 ranks: job ended {elapsed:.2f} s after rank 1 fell asleep")
    assert elapsed < HANG_TIMEOUT + BOUND, out
    report = _one_report(out)
    head = report.splitlines()[0]
    assert "rank 0 waited" in head and "in 'agreement'" in head, report
    assert "1 of 2 ranks did not arrive: rank 1" in head, report
    lines = report.splitlines()
    culprit = next(line for line in lines if line.lstrip().startswith("rank 1 ("))
    assert "did not arrive: not in a distengine collective" in culprit, report
    assert "iteration 5" in culprit and "last event fired ITERATION_COMPLETED" in culprit
    assert "epoch 1" in culprit
    # the Python stack of rank 1's main thread, down to the handler's frame
    assert re.search(
        r'hanging_rank\.py", line \d+, in slow_handler\n\s+time\.sleep\(seconds\)', report
    )
    waiting = next(line for line in lines if line.lstrip().startswith("rank 0 ("))
    # the agreement overlaps the next iteration: rank 0 started iteration 5's agreement,
    # ran iteration 6 and waits for it at the end of iteration 6
    assert "is waiting in 'agreement'" in waiting and "iteration 6" in waiting
    # every other rank said why it ended, in one line, without repeating the report
    assert "rank 0 failed (HangError: ranks [1] did not reach 'agreement'" in out, out


def test_plain_ranks_with_the_store_host_asleep():
    """3 ranks without a launcher; the sleeping rank 0 hosts the store."""
    results = run_ranks([SCRIPT, "4", "0"], 3, timeout=60, extra_env=ENV)
    outs = "\n".join(f"--- rank {r.rank}:\n{r.stderr}" for r in results)
    assert not any(r.timed_out for r in results), outs
    assert [r.returncode for r in results] == [FAILURE_EXIT_CODE] * 3, outs
    elapsed = max(r.ended_at for r in results) - _hang_at(results[0].stderr)
    print(f"plain python, 3 ranks: last rank ended {elapsed:.2f} s after rank 0 fell asleep")
    assert elapsed < HANG_TIMEOUT + BOUND, outs
    report = _one_report(outs)
    assert "2 ranks did not arrive" not in report
    assert "1 of 3 ranks did not arrive: rank 0" in report.splitlines()[0], report
    assert re.search(r"rank 0 \(host .*\) did not arrive: .*iteration 4", report), report
    assert "in slow_handler" in report


def test_ranks_blocked_in_a_step_collective_with_the_agreement_pending():
    """The overlapped agreement is watched while pending: rank 0 blocks in the all_reduce of
    iteration 6's step (as in DDP's backward), not in the agreement itself, yet the report
    names rank 1, asleep in a handler of iteration 5, as the rank that did not arrive."""
    results = run_ranks([SCRIPT, "5", "1", "--allreduce-step"], 2, timeout=60, extra_env=ENV)
    outs = "\n".join(f"--- rank {r.rank}:\n{r.stderr}" for r in results)
    assert not any(r.timed_out for r in results), outs
    assert [r.returncode for r in results] == [FAILURE_EXIT_CODE] * 2, outs
    elapsed = max(r.ended_at for r in results) - _hang_at(outs)
    assert elapsed < HANG_TIMEOUT + BOUND, outs
    report = _one_report(outs)
    assert "rank 0 waited" in report and "1 of 2 ranks did not arrive: rank 1" in report, report
    assert re.search(r"rank 1 \(host .*\) did not arrive: .*iteration 5", report), report
    assert "in slow_handler" in report
    waiting = next(line for line in report.splitlines() if line.lstrip().startswith("rank 0 ("))
    assert "is waiting in 'agreement'" in waiting and "iteration 6" in waiting, report


def test_a_slow_step_below_the_timeout_is_not_a_hang():
    results = run_ranks([SCRIPT, "3", "1", "1.0"], 2, timeout=60, extra_env=ENV)
    outs = "\n".join(r.stderr for r in results)
    assert [r.returncode for r in results] == [0, 0], outs
    assert "hang report" not in outs
    assert all("finished at iteration 100" in r.stdout for r in results), outs
