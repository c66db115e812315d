"""Shared machinery of the end-to-end tests: launch torchrun jobs as subprocesses with a
bounded timeout, and kill their whole process tree (and any orphan) at teardown.

Each launch runs in its own session with its output in a log file. torchrun starts each
worker in a session of its own, so teardown collects descendants by pid from /proc, and
kills leftovers whose command line holds the test's unique tmp_path.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from proctree import kill_tree

REPO = Path(__file__).resolve().parents[2]
LAUNCH_TIMEOUT = 90  # seconds for one launch; a healthy one takes 5-10 s here

# Variables of an outer launcher must not leak into the jobs these tests start.
_LAUNCHER_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "NNODES",
    "NODE_RANK",
    "NPROC_PER_NODE",
    "MAX_RESTARTS",
    "RDZV_ENDPOINT",
    "RDZV_ID",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_strays(marker: str) -> None:
    """Kills processes whose command line holds ``marker`` (a test's unique tmp_path).

    A torchrun agent that dies without stopping its workers leaves them orphaned, out of
    reach of :func:`_kill_tree`; each test's jobs carry its tmp_path in their arguments,
    so they can be found by it.
    """
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _kill_tree(proc: subprocess.Popen) -> None:
    kill_tree(proc.pid)
    proc.wait(timeout=10)


class Launch:
    """One launcher run: a subprocess in its own session, output kept in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            args,
            cwd=REPO,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = LAUNCH_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(
                f"launcher still running after {timeout} s; output:\n{self.output()[-4000:]}"
            )

    def kill(self) -> None:
        if self.proc.poll() is None:
            _kill_tree(self.proc)
        self._log_file.close()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Launch]]:
    """Starts launchers; whatever is still running at teardown is killed, pass or fail."""
    started: list[Launch] = []

    def start(args: list[str], name: str = "launch", **env_vars: str) -> Launch:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in _LAUNCHER_VARS and not k.startswith(("TORCHELASTIC_", "PET_"))
        }
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["OMP_NUM_THREADS"] = "1"
        env.update(env_vars)
        job = Launch(args, env, tmp_path / f"{name}.log")
        started.append(job)
        return job

    yield start
    for job in started:
        job.kill()
    _kill_strays(str(tmp_path))
