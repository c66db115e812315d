"""What the launcher told this process: ranks, sizes and the store address, from ``os.environ``.

torchrun (and :func:`distengine.distributed.spawn`) describe a process through environment
variables. This module only reads and validates them; it starts nothing, so it can be
used from DataLoader workers and from the parent of :func:`spawn` alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = [
    "DEFAULT_HANG_TIMEOUT",
    "DEFAULT_PREEMPT_EXIT",
    "FAILURE_TIMEOUT_ENV",
    "HANG_TIMEOUT_ENV",
    "LAUNCHER_PID_ENV",
    "PREEMPT_EXIT_ENV",
    "STORE_HOSTED_ENV",
    "LauncherEnv",
    "failure_timeout_from_env",
    "hang_timeout_from_env",
    "launcher_pid",
    "preempt_exit_from_env",
    "read_env",
]

FAILURE_TIMEOUT_ENV = "DISTENGINE_FAILURE_TIMEOUT"
"""Seconds within which every rank ends after one rank reported a failure (default 10)."""

STORE_HOSTED_ENV = "DISTENGINE_STORE_HOSTED"
"""Set to ``"1"`` by :func:`spawn`: its parent hosts the store, every rank is a client."""

HANG_TIMEOUT_ENV = "DISTENGINE_HANG_TIMEOUT"
"""Seconds an agreement or checkpoint collective may wait for the other ranks before the
job is reported as hung (default 600; ``0`` or ``off`` turns the detection off)."""

PREEMPT_EXIT_ENV = "DISTENGINE_PREEMPT_EXIT"
"""Exit status of a run stopped by a preemption signal after its checkpoint (default 75)."""

LAUNCHER_PID_ENV = "DISTENGINE_LAUNCHER_PID"
"""Pid of the launcher that owns this worker when it is not the direct parent (set by
``launchers/record_exit.sh``, which sits between torchrun's agent and the worker)."""

DEFAULT_FAILURE_TIMEOUT = 10.0
DEFAULT_HANG_TIMEOUT = 600.0
DEFAULT_PREEMPT_EXIT = 75

_REQUIRED = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class LauncherEnv:
    """The launcher variables of one process.

    Attributes:
        rank: global rank (``RANK``).
        world_size: number of processes (``WORLD_SIZE``).
        local_rank: rank on this node (``LOCAL_RANK``; defaults to ``RANK``).
        local_world_size: processes on this node (``LOCAL_WORLD_SIZE``; defaults to
            ``WORLD_SIZE``, i.e. one node).
        nnodes: number of nodes (``GROUP_WORLD_SIZE`` as torchrun sets it, else
            ``WORLD_SIZE // LOCAL_WORLD_SIZE``).
        master_addr: host of the store (``MASTER_ADDR``).
        master_port: port of the store (``MASTER_PORT``).
        hosted_store: the store is hosted by the launcher (torchrun's agent, or the parent
            of :func:`spawn`), so every rank connects to it as a client.
        restart_count: torchrun's ``TORCHELASTIC_RESTART_COUNT`` (0 without it).

    Example:
        >>> env = read_env()  # None when no launcher started this process
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    nnodes: int
    master_addr: str
    master_port: int
    hosted_store: bool
    restart_count: int


def _int_var(name: str, default: int | None = None, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        if default is None:
            raise ValueError(
                f"environment variable {name} is required by the launcher setup, but it is not set"
            )
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"environment variable {name} must be >= {minimum}, got {value}")
    return value


def read_env() -> LauncherEnv | None:
    """Reads the launcher variables; ``None`` when this process was not started by a launcher.

    A launcher is recognised by ``RANK`` and ``WORLD_SIZE``; then ``MASTER_ADDR`` and
    ``MASTER_PORT`` are required too.

    Returns:
        The parsed variables, or ``None`` without ``RANK``/``WORLD_SIZE``.

    Raises:
        ValueError: a variable is missing, not an integer, or inconsistent (e.g.
            ``RANK >= WORLD_SIZE``).

    Example:
        >>> import os
        >>> "RANK" in os.environ or read_env() is None
        True
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    missing = [name for name in _REQUIRED if not os.environ.get(name)]
    if missing:
        raise ValueError(
            f"launcher environment is incomplete: expected {', '.join(_REQUIRED)}, missing {', '.join(missing)}"
        )
    world_size = _int_var("WORLD_SIZE", minimum=1)
    rank = _int_var("RANK")
    if rank >= world_size:
        raise ValueError(f"RANK must be < WORLD_SIZE={world_size}, got RANK={rank}")
    local_world_size = _int_var("LOCAL_WORLD_SIZE", default=world_size, minimum=1)
    local_rank = _int_var("LOCAL_RANK", default=rank)
    if local_rank >= local_world_size:
        raise ValueError(
            f"LOCAL_RANK must be < LOCAL_WORLD_SIZE={local_world_size}, got LOCAL_RANK={local_rank}"
        )
    nnodes = _int_var("GROUP_WORLD_SIZE", default=max(1, world_size // local_world_size), minimum=1)
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    return LauncherEnv(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        local_world_size=local_world_size,
        nnodes=nnodes,
        master_addr=os.environ["MASTER_ADDR"],
        master_port=_int_var("MASTER_PORT", minimum=1),
        hosted_store=agent or os.environ.get(STORE_HOSTED_ENV) == "1",
        restart_count=_int_var("TORCHELASTIC_RESTART_COUNT", default=0),
    )


def failure_timeout_from_env() -> float:
    """``DISTENGINE_FAILURE_TIMEOUT`` in seconds (default 10).

    Raises:
        ValueError: the variable is not a positive number.

    Example:
        >>> failure_timeout_from_env() > 0
        True
    """
    raw = os.environ.get(FAILURE_TIMEOUT_ENV)
    if raw is None or raw == "":
        return DEFAULT_FAILURE_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"{FAILURE_TIMEOUT_ENV} must be a number of seconds, got {raw!r}"
        ) from None
    if not value > 0:
        raise ValueError(f"{FAILURE_TIMEOUT_ENV} must be > 0 seconds, got {value}")
    return value


def hang_timeout_from_env() -> float | None:
    """``DISTENGINE_HANG_TIMEOUT`` in seconds (default 600); ``None`` when turned off.

    ``0``, ``off``, ``none`` or ``false`` turn hang detection off (for jobs whose ranks
    legitimately wait for each other longer than any bound, e.g. one rank preparing data
    for an hour while the others wait in a collective).

    Raises:
        ValueError: the variable is neither a number >= 0 nor one of the words above.

    Example:
        >>> t = hang_timeout_from_env()
        >>> t is None or t > 0
        True
    """
    raw = os.environ.get(HANG_TIMEOUT_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_HANG_TIMEOUT
    if raw.strip().lower() in ("off", "none", "false"):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"{HANG_TIMEOUT_ENV} must be a number of seconds (0 or 'off' to turn hang detection "
            f"off), got {raw!r}"
        ) from None
    if value != value or value < 0:  # NaN or negative
        raise ValueError(f"{HANG_TIMEOUT_ENV} must be >= 0 seconds (0 = off), got {raw!r}")
    return None if value == 0 else value


def preempt_exit_from_env() -> int:
    """``DISTENGINE_PREEMPT_EXIT``: the exit status of a preempted run (default 75, ``EX_TEMPFAIL``).

    Schedulers restart a job by its exit status, each with its own rule (Kubeflow's
    ``ExitCode`` policy retries only statuses >= 128), so the status is configurable; it
    must be a valid, non-zero exit status.

    Raises:
        ValueError: not an integer in 1..255.

    Example:
        >>> 1 <= preempt_exit_from_env() <= 255
        True
    """
    raw = os.environ.get(PREEMPT_EXIT_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_PREEMPT_EXIT
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(
            f"{PREEMPT_EXIT_ENV} must be an exit status in 1..255, got {raw!r}"
        ) from None
    if not 1 <= value <= 255:
        raise ValueError(f"{PREEMPT_EXIT_ENV} must be an exit status in 1..255, got {value}")
    return value


def launcher_pid() -> int | None:
    """The pid of the launcher this worker must not outlive, or ``None`` when there is none.

    ``DISTENGINE_LAUNCHER_PID`` when set, else the parent process when a launcher that stays
    alive for the whole job started this one: torchrun's agent (``TORCHELASTIC_RUN_ID`` is
    set) or :func:`~distengine.distributed.spawn` (``DISTENGINE_STORE_HOSTED``). A process
    started by hand with ``RANK``/``WORLD_SIZE`` set has no such launcher: its parent (a
    shell) may legitimately exit first.

    Raises:
        ValueError: ``DISTENGINE_LAUNCHER_PID`` is not a positive integer.

    Example:
        >>> pid = launcher_pid()
        >>> pid is None or pid > 0
        True
    """
    raw = os.environ.get(LAUNCHER_PID_ENV)
    if raw:
        try:
            pid = int(raw)
        except ValueError:
            raise ValueError(f"{LAUNCHER_PID_ENV} must be a process id, got {raw!r}") from None
        if pid < 1:
            raise ValueError(f"{LAUNCHER_PID_ENV} must be a process id >= 1, got {pid}")
        return pid
    if os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get(STORE_HOSTED_ENV) == "1":
        return os.getppid()
    return None
