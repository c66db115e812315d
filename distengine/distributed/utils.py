"""The rest of Ignite's ``idist`` helpers, under Ignite's module path ``distributed.utils``.

Support flags, configuration queries for logs, handler decorators and the explicit
re-synchronisation. The names Ignite defines in ``ignite.distributed.utils`` (collectives,
queries, ``spawn``, ``initialize``...) can be imported from here too.
"""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import Callable
from typing import Any, TextIO, TypeVar

import torch.distributed as dist

from . import runtime
from .collectives import (
    all_gather,
    all_gather_tensors_with_shapes,
    all_reduce,
    barrier,
    broadcast,
    one_rank_first,
)
from .groups import new_group
from .groups import rank_not_in_group as _rank_not_in_group  # noqa: F401  (Ignite's name)
from .launch import Parallel, spawn
from .queries import (
    backend,
    device,
    get_local_rank,
    get_nnodes,
    get_node_rank,
    get_nproc_per_node,
    get_rank,
    get_world_size,
    is_main_process,
    model_name,
)
from .runtime import finalize, initialize

__all__ = [
    "Parallel",
    "all_gather",
    "all_gather_tensors_with_shapes",
    "all_reduce",
    "available_backends",
    "backend",
    "barrier",
    "broadcast",
    "device",
    "finalize",
    "get_local_rank",
    "get_nnodes",
    "get_node_rank",
    "get_nproc_per_node",
    "get_rank",
    "get_world_size",
    "has_hvd_support",
    "has_native_dist_support",
    "has_xla_support",
    "hostname",
    "initialize",
    "is_main_process",
    "model_name",
    "new_group",
    "one_rank_first",
    "one_rank_only",
    "set_local_rank",
    "setup_logger",
    "show_config",
    "spawn",
    "sync",
]

F = TypeVar("F", bound=Callable[..., Any])

has_native_dist_support: bool = dist.is_available()
"""Whether this torch build has ``torch.distributed`` (distengine needs it for more than one rank)."""

has_xla_support: bool = False
"""Always ``False``: distengine has no XLA (TPU) runtime."""

has_hvd_support: bool = False
"""Always ``False``: distengine has no Horovod runtime."""


def available_backends() -> tuple[str, ...]:
    """Returns the torch backends this build offers, among ``"nccl"``, ``"gloo"`` and ``"mpi"``.

    Example:
        >>> import distengine.distributed as idist
        >>> "gloo" in idist.available_backends()
        True
    """
    names = ("nccl", "gloo", "mpi")
    return tuple(n for n in names if getattr(dist, f"is_{n}_available")())


def hostname() -> str:
    """This machine's host name (``socket.gethostname()``).

    Example:
        >>> import distengine.distributed as idist
        >>> isinstance(idist.hostname(), str)
        True
    """
    return socket.gethostname()


def setup_logger(
    name: str | None = "distengine",
    level: int = logging.INFO,
    stream: TextIO | None = None,
    format: str = "%(asctime)s %(name)s %(levelname)s: %(message)s",
    filepath: str | None = None,
    distributed_rank: int | None = None,
    reset: bool = False,
    encoding: str | None = "utf-8",
) -> logging.Logger:
    """Sets up a named logger that writes on rank 0 only (to ``stream`` and optionally a file).

    Ignite's ``ignite.utils.setup_logger``, also importable as
    ``distengine.utils.setup_logger``; it lives here because it asks this package for the rank
    (and :func:`show_config` uses it).

    On other ranks its handlers are replaced by a ``NullHandler``, so a job of N
    processes prints each message once. A logger configured before keeps its
    configuration unless ``reset=True``. The logger does not propagate to its parents.

    Args:
        name: logger name (``None``: the root logger).
        level: e.g. ``logging.INFO``.
        stream: where to write (default ``sys.stderr``).
        format: ``logging.Formatter`` format.
        filepath: also write to this file.
        distributed_rank: this process's rank (default ``idist.get_rank()``).
        reset: drop the logger's handlers and configure it again.
        encoding: encoding of ``filepath``.

    Returns:
        The logger.

    Example:
        >>> import sys
        >>> logger = setup_logger("my_job", stream=sys.stdout, format="%(name)s %(levelname)s: %(message)s")
        >>> logger.info("epoch 1 done")  # printed by rank 0 only
        my_job INFO: epoch 1 done
    """
    existing = name is None or name in logging.root.manager.loggerDict
    logger = logging.getLogger(name)
    if distributed_rank is None:
        distributed_rank = get_rank()
    if distributed_rank > 0 or reset:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
    if distributed_rank > 0:
        logger.addHandler(logging.NullHandler())
    if existing and not reset:
        return logger
    if distributed_rank == 0:
        logger.setLevel(level)
        formatter = logging.Formatter(format)
        handlers: list[logging.Handler] = [logging.StreamHandler(stream=stream)]
        if filepath is not None:
            handlers.append(logging.FileHandler(filepath, encoding=encoding))
        for handler in handlers:
            handler.setLevel(level)
            handler.setFormatter(formatter)
            logger.addHandler(handler)
    if name is not None:
        logger.propagate = False
    return logger


def show_config() -> None:
    """Logs the distributed configuration of this process (logger ``distengine.distributed.utils``).

    Example:
        >>> import distengine.distributed as idist
        >>> idist.show_config()  # logs "distributed configuration: serial" here (stderr)
    """
    log = setup_logger(__name__)
    log.info(f"distributed configuration: {model_name()}")
    log.info(f"backend: {backend()}")
    log.info(f"device: {device().type}")
    log.info(f"hostname: {hostname()}")
    log.info(f"world size: {get_world_size()}")
    log.info(f"rank: {get_rank()}")
    log.info(f"local rank: {get_local_rank()}")
    log.info(f"num processes per_node: {get_nproc_per_node()}")
    log.info(f"num nodes: {get_nnodes()}")
    log.info(f"node rank: {get_node_rank()}")


def sync(temporary: bool = False) -> None:
    """Adopts the process group that exists now, after one was created or destroyed outside distengine.

    distengine notices by itself when a group it adopted (one made with
    ``torch.distributed.init_process_group``) is destroyed, so this is rarely needed;
    after :func:`finalize` it is how to adopt a group created afterwards by hand.

    Args:
        temporary: accepted for Ignite compatibility; no effect (distengine checks the
            group on every call anyway).

    Example:
        >>> import distengine.distributed as idist
        >>> idist.sync()
        >>> idist.get_world_size()
        1
    """
    del temporary
    runtime.resync()


def set_local_rank(index: int) -> None:
    """Tells distengine this process's local rank when no ``LOCAL_RANK`` variable says it.

    For a group created with ``torch.distributed.init_process_group`` or
    ``initialize(init_method=...)`` on several nodes without a launcher; otherwise the
    local rank is taken to be the rank (one node).

    Args:
        index: the local rank.

    Raises:
        ValueError: ``index`` is not an int >= 0, or it contradicts the ``LOCAL_RANK``
            of the launcher that started this process.

    Example:
        >>> import distengine.distributed as idist
        >>> idist.set_local_rank(0)
    """
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"index must be an int >= 0, got {index!r}")
    runtime.hint_local_rank(index)


def one_rank_only(rank: int = 0, with_barrier: bool = False) -> Callable[[F], F]:
    """Makes the decorated function run on ``rank`` only and return ``None`` elsewhere.

    Typical for handlers that write files or print. With ``with_barrier=True`` every
    rank waits at a barrier after the call, so the others do not run ahead of the one
    that works (every rank must then call the function).

    Args:
        rank: the rank that runs the function.
        with_barrier: end every call with :func:`barrier`.

    Raises:
        ValueError: ``rank`` is not an int >= 0 (checked when decorating), or not a rank
            of the job (checked when called).

    Example:
        >>> import distengine.distributed as idist
        >>> @idist.one_rank_only()
        ... def announce():
        ...     return "written by rank 0"
        >>> announce()
        'written by rank 0'
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"rank must be an int >= 0, got {rank!r}")

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            world = get_world_size()
            if rank >= world:
                raise ValueError(f"one_rank_only(rank={rank}) in a job of {world} rank(s)")
            result = fn(*args, **kwargs) if get_rank() == rank else None
            if with_barrier:
                barrier()
            return result

        return wrapper  # type: ignore[return-value]

    return decorate
