"""What the launcher told this process: ranks, sizes and the store address, from ``os.environ``.

torchrun (and :func:`distengine.distributed.spawn`) describe a process through environment
variables. This module only reads and validates them; it starts nothing, so it can be
used from DataLoader workers and from the parent of :func:`spawn` alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = [
    "FAILURE_TIMEOUT_ENV",
    "STORE_HOSTED_ENV",
    "LauncherEnv",
    "failure_timeout_from_env",
    "read_env",
]

FAILURE_TIMEOUT_ENV = "DISTENGINE_FAILURE_TIMEOUT"
"""Seconds within which every rank ends after one rank reported a failure (default 10)."""

STORE_HOSTED_ENV = "DISTENGINE_STORE_HOSTED"
"""Set to ``"1"`` by :func:`spawn`: its parent hosts the store, every rank is a client."""

DEFAULT_FAILURE_TIMEOUT = 10.0

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
