"""Process-launch helpers for multi-process tests: plain ``python`` ranks, torchrun, bounded waits.

Every helper bounds the time it waits and kills what it started, pass or fail, so a
broken test can never leave processes (or their ports) behind.

Typical use (a script that reads the launcher variables, e.g. through ``idist``)::

    from helpers import run_ranks, run_torchrun

    results = run_ranks([str(script), "arg"], world_size=2, timeout=60)
    assert [r.returncode for r in results] == [0, 0], results[0].stderr

    result = run_torchrun([str(script)], nproc_per_node=2, timeout=90)
    assert result.returncode == 0, result.stderr

``RankResult.ended_at`` is the wall-clock time (``time.time()``) at which the exit was
observed, so a script can print ``time.time()`` at some event and the test can measure
how long after it each rank ended.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from proctree import kill_tree

__all__ = [
    "REPO_ROOT",
    "RankResult",
    "child_env",
    "free_port",
    "rank_env",
    "run_processes",
    "run_ranks",
    "run_torchrun",
]

REPO_ROOT = Path(__file__).resolve().parents[2]

_LAUNCHER_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_USE_AGENT_STORE",
    "TORCHELASTIC_RESTART_COUNT",
    "DISTENGINE_STORE_HOSTED",
)


@dataclass
class RankResult:
    """How one process ended.

    Attributes:
        rank: index of the process (its ``RANK`` for :func:`run_ranks`).
        returncode: exit status (negative: killed by that signal; the helper kills
            processes still running at the timeout, so check ``timed_out``).
        stdout: everything it printed on stdout.
        stderr: everything it printed on stderr.
        ended_at: ``time.time()`` when its exit was observed.
        timed_out: whether the helper had to kill it.
    """

    rank: int
    returncode: int
    stdout: str
    stderr: str
    ended_at: float
    timed_out: bool


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it).

    Example:
        >>> 0 < free_port() < 65536
        True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child: launcher variables removed, distengine importable.

    Example:
        >>> "RANK" in child_env()
        False
    """
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
    # The children import distengine from this checkout, whatever the install state.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")  # 2 cores shared by all ranks: no oversubscription
    env.update(extra or {})
    return env


def rank_env(
    rank: int, world_size: int, port: int, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of one plain ``python`` rank on loopback (no launcher agent).

    Example:
        >>> rank_env(1, 2, 29500)["RANK"]
        '1'
    """
    env = child_env(extra)
    env.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    return env


def run_processes(
    commands: Sequence[Sequence[str]],
    envs: Sequence[Mapping[str, str]],
    timeout: float,
    cwd: str | os.PathLike[str] | None = None,
) -> list[RankResult]:
    """Starts one process per command, waits at most ``timeout`` s in total, kills leftovers.

    Output goes to temporary files (no pipe can fill up and block a child). Each exit is
    observed by its own waiting thread, so ``ended_at`` is exact without polling.

    Args:
        commands: argv of each process.
        envs: full environment of each process.
        timeout: seconds for all of them together.
        cwd: working directory (default: the repository root).

    Returns:
        One :class:`RankResult` per command, in order.
    """
    assert len(commands) == len(envs), (len(commands), len(envs))
    with tempfile.TemporaryDirectory(prefix="distengine-procs-") as tmp:
        procs, files = [], []
        ended: list[float | None] = [None] * len(commands)
        try:
            for i, (cmd, env) in enumerate(zip(commands, envs)):
                out = open(Path(tmp) / f"{i}.out", "w+b")  # noqa: SIM115 (closed below)
                err = open(Path(tmp) / f"{i}.err", "w+b")  # noqa: SIM115
                files.append((out, err))
                procs.append(
                    subprocess.Popen(
                        list(cmd), env=dict(env), cwd=cwd or REPO_ROOT, stdout=out, stderr=err
                    )
                )

            def watch(i: int) -> None:
                procs[i].wait()
                ended[i] = time.time()

            watchers = [
                threading.Thread(target=watch, args=(i,), daemon=True) for i in range(len(procs))
            ]
            for w in watchers:
                w.start()
            deadline = time.monotonic() + timeout
            for w in watchers:
                w.join(max(0.0, deadline - time.monotonic()))
        finally:
            timed_out = [p.poll() is None for p in procs]
            for p in procs:
                if p.poll() is None:
                    kill_tree(p.pid)
            for p in procs:
                p.wait()
        results = []
        for i, (p, (out, err)) in enumerate(zip(procs, files)):
            out.seek(0)
            err.seek(0)
            results.append(
                RankResult(
                    rank=i,
                    returncode=p.returncode,
                    stdout=out.read().decode(errors="replace"),
                    stderr=err.read().decode(errors="replace"),
                    ended_at=ended[i] if ended[i] is not None else time.time(),
                    timed_out=timed_out[i],
                )
            )
            out.close()
            err.close()
        return results


def run_ranks(
    args: Sequence[str],
    world_size: int,
    timeout: float,
    extra_env: Mapping[str, str] | None = None,
) -> list[RankResult]:
    """Runs ``python *args`` as ``world_size`` plain ranks on loopback (env:// variables set here).

    Rank 0 hosts the store on a fresh port; there is no launcher agent, so nothing but
    the program itself ends a rank whose peer failed.

    Args:
        args: script path and its arguments.
        world_size: number of ranks.
        timeout: seconds for all ranks together; leftovers are killed.
        extra_env: more environment variables (e.g. ``DISTENGINE_FAILURE_TIMEOUT``).

    Returns:
        One :class:`RankResult` per rank, in rank order.
    """
    port = free_port()
    cmd = [sys.executable, *args]
    return run_processes(
        [cmd] * world_size,
        [rank_env(r, world_size, port, extra_env) for r in range(world_size)],
        timeout,
    )


def run_torchrun(
    args: Sequence[str],
    nproc_per_node: int,
    timeout: float,
    extra_env: Mapping[str, str] | None = None,
    torchrun_args: Sequence[str] = (),
) -> RankResult:
    """Runs ``torchrun --standalone --nproc_per_node=N *args`` (single node, free port).

    Args:
        args: script path and its arguments.
        nproc_per_node: number of ranks.
        timeout: seconds; the launcher (and with it its workers) is killed after that.
        extra_env: more environment variables.
        torchrun_args: more launcher options (e.g. ``["--max-restarts=1"]``).

    Returns:
        The launcher's :class:`RankResult` (its output includes the workers').
    """
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc_per_node}",
        *torchrun_args,
        *args,
    ]
    return run_processes([cmd], [child_env(extra_env)], timeout)[0]
