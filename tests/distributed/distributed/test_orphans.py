"""No orphan workers: when the launcher dies, its workers end within a bounded time.

torchrun starts each worker in a session of its own, so a SIGKILLed agent leaves them
running (measured: one trained to the end); ``idist.spawn``'s children likewise outlive a
killed parent. tests/distributed/distributed/scripts/orphan_probe.py trains forever on 2 ranks, each
with a DataLoader worker, and writes every pid; the test SIGKILLs the launcher and checks
that all of them end within the bound (the watchdog polls the launcher every 0.2 s).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO_ROOT, child_env
from proctree import kill_tree

pytestmark = pytest.mark.timeout(180)

SCRIPT = str(Path(__file__).parent / "scripts" / "orphan_probe.py")
BOUND = 5.0  # seconds from the SIGKILL to the last worker gone, on a loaded 2-core machine
START_TIMEOUT = 90.0


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _pids(out: Path, proc: subprocess.Popen, log: Path) -> list[int]:
    names = [f"rank{r}.pid" for r in range(2)] + [f"rank{r}.loader.pid" for r in range(2)]
    deadline = time.monotonic() + START_TIMEOUT
    while not all((out / n).exists() for n in names):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the job did not start (status {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return [int((out / n).read_text()) for n in names]


def _kill_launcher_and_time_workers(cmd: list[str], tmp_path: Path, launcher_pid_file: str | None):
    out = tmp_path / "out"
    out.mkdir()
    log = tmp_path / "launcher.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [*cmd, str(out)] + (["--spawn", "2"] if launcher_pid_file else []),
            cwd=REPO_ROOT,
            env=child_env(),
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    workers: list[int] = []
    try:
        workers = _pids(out, proc, log)
        launcher = int((out / launcher_pid_file).read_text()) if launcher_pid_file else proc.pid
        assert all(_alive(p) for p in workers)
        os.kill(launcher, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(timeout=10)
        while any(_alive(p) for p in workers) and time.monotonic() - killed_at < 30:
            time.sleep(0.02)
        elapsed = time.monotonic() - killed_at
        left = [p for p in workers if _alive(p)]
        return elapsed, left, log.read_text(errors="replace")
    finally:
        kill_tree(proc.pid)
        for pid in workers:  # orphans are outside the launcher's tree by now
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
def test_workers_of_a_sigkilled_torchrun_agent_end(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        SCRIPT,
    ]
    elapsed, left, log = _kill_launcher_and_time_workers(cmd, tmp_path, None)
    print(f"torchrun agent SIGKILLed: last worker gone after {elapsed:.2f} s")
    assert not left, f"still running {elapsed:.1f} s after the agent died: {left}\n{log[-3000:]}"
    assert elapsed < BOUND
    assert "the launcher that started this process" in log and "is gone" in log


def test_children_of_a_sigkilled_spawn_parent_end(tmp_path):
    cmd = [sys.executable, SCRIPT]
    elapsed, left, log = _kill_launcher_and_time_workers(cmd, tmp_path, "launcher.pid")
    print(f"spawn parent SIGKILLed: last worker gone after {elapsed:.2f} s")
    assert not left, f"still running {elapsed:.1f} s after the parent died: {left}\n{log[-3000:]}"
    assert elapsed < BOUND
