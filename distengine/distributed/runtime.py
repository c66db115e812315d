"""The process group of this process: creation from the launcher's environment, teardown, failure.

One :class:`Runtime` per process holds what distengine created: the store connection, the
default process group, a gloo side group under NCCL, and the failure watchdog. Every
distengine call that needs the group goes through :func:`active`, which creates it on first
use when launcher variables are present. Without them the process is a job of one and
:func:`active` returns ``None``.

Teardown order matters on torch 2.13 (docs/internals.md, "Platform facts"): DDP modules are released first
(see :mod:`.teardown`), then the process groups are destroyed, then the stores are
dropped. A process that reported a failure does not tear down at all: its peers are dying,
so it flushes its output and exits with status 1.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import sys
import threading
import weakref
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

# torch.distributed.nn evaluates ``group=group.WORLD`` defaults at import time. Imported
# after a process group exists (DDP imports it through torch._dynamo), those defaults pin
# the default group forever: it can then never be destroyed before interpreter exit and
# gloo aborts there ("terminate called without an active exception", see .teardown).
# Importing it with this package, before any group exists — also one the user creates
# with init_process_group — captures ``None`` instead.
import torch.distributed.nn  # noqa: F401, E402

from . import rendezvous
from .env import (
    LauncherEnv,
    failure_timeout_from_env,
    hang_timeout_from_env,
    launcher_pid,
    read_env,
)
from .stores import connect_store, watch_connection
from .teardown import release_ddp_modules
from .watchdog import ALL_RELEASED, FAILURE_EXIT_CODE, FailureWatchdog, record_failure

__all__ = [
    "DEFAULT_TIMEOUT",
    "Runtime",
    "active",
    "finalize",
    "initialize",
    "notify_failure",
    "passive_env",
    "hint_local_rank",
    "resync",
]

DEFAULT_TIMEOUT = timedelta(minutes=30)
"""Default bound on any collective (passed to ``init_process_group``)."""

_CLOSED = "exit/closed"
_ALL_CLOSED = "exit/all_closed"


@dataclass
class Runtime:
    """What distengine created in this process (internal; see :func:`initialize`)."""

    env: LauncherEnv
    backend: str
    timeout: timedelta
    failure_timeout: float
    store: dist.Store  # handed to init_process_group (attempt-prefixed under an agent)
    keys: dist.Store  # distengine's own keys (failure record, rendezvous, exit)
    base_store: dist.Store  # the TCP connection (or server, on rank 0 without an agent)
    owns_group: bool
    cpu_group: Any = None  # gloo side group under NCCL, else None (the default group is CPU)
    watchdog: FailureWatchdog | None = None
    watch_store: dist.Store | None = None
    pid: int = field(default_factory=os.getpid)
    # weak reference to the default group, to notice when an adopted one is destroyed (a
    # strong one would keep gloo's threads alive past the group's end: abort at exit)
    world_ref: Any = None
    subgroups: dict = field(default_factory=dict)  # groups made from rank lists (groups.py)
    init_method: str = "env://"
    failed: bool = False
    previous_excepthook: Any = None
    hang_timeout: float | None = None
    # 1-element int64 buffers of the agreement (agreement.py), reused: no allocation per call
    agreement_buffers: list[torch.Tensor] = field(default_factory=list)
    # how often each rendezvous_check tag was used with this group (agreement.py)
    rendezvous_counts: dict[str, int] = field(default_factory=dict)
    # whether a CPU DDP model of this group carries agreements in its gradient all-reduce
    # (agreement.py: ride_gradients); never reset while the group lives, so that every rank
    # of a program decides alike whether to ride
    rides: bool = False

    @property
    def hosts_store(self) -> bool:
        return self.owns_group and not self.env.hosted_store and self.env.rank == 0


# Process-wide on purpose: torch keeps one default process group per process, and this is
# distengine's record of it (None: a job of one). Everything whose lifetime is the group's
# (stores, side groups, the agreement's buffers, rendezvous counts) lives on the Runtime and
# goes with it; only whether finalize() ran and whether the exit hook is installed outlive it.
_LOCK = threading.RLock()
_runtime: Runtime | None = None
_finalized = False
_atexit_registered = False


def _in_worker() -> bool:
    """A DataLoader worker or a forked child: it must never join (or create) the group."""
    if _runtime is not None and _runtime.pid != os.getpid():
        return True
    return torch.utils.data.get_worker_info() is not None


def active() -> Runtime | None:
    """The runtime of this process, created on first use under a launcher; ``None`` otherwise.

    ``None`` means "a job of one": no launcher variables, after :func:`finalize`, or in a
    DataLoader worker (see :func:`passive_env`).
    """
    rt = _runtime
    if rt is not None and rt.pid == os.getpid():
        if rt.owns_group or _adopted_alive(rt):
            return rt
        _forget_adopted(rt)  # the user destroyed the group they had created
    if _finalized or _in_worker() or (read_env() is None and not dist.is_initialized()):
        return None
    initialize()
    return _runtime


def passive_env() -> LauncherEnv | None:
    """The launcher variables of a process that must not use the group (a DataLoader worker).

    Rank queries in such a process answer from these; collectives raise.
    """
    if _finalized or not _in_worker():
        return None
    rt = _runtime
    return rt.env if rt is not None else read_env()


def _env_from_group() -> LauncherEnv:
    """Launcher-like description of a group the user created without launcher variables."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    hint = rendezvous.local_rank_hint()
    return LauncherEnv(
        rank=rank,
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", rank if hint is None else hint)),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world_size)),
        nnodes=int(os.environ.get("GROUP_WORLD_SIZE", 1)),
        master_addr="",
        master_port=0,
        hosted_store=False,
        restart_count=0,
    )


def _as_timedelta(value: float | timedelta | None, name: str, default: timedelta) -> timedelta:
    if value is None:
        return default
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(
            f"{name} must be seconds (a number) or a datetime.timedelta, got {type(value).__name__}"
        )
    if not seconds > 0:
        raise ValueError(f"{name} must be > 0 seconds, got {seconds}")
    return timedelta(seconds=seconds)


def _resolve_backend(backend: str | None) -> str:
    if backend is None:  # DISTENGINE_BACKEND overrides the default (launchers/cpu.sh: gloo)
        backend = os.environ.get("DISTENGINE_BACKEND") or None
    if backend is None:
        return "nccl" if torch.cuda.is_available() else "gloo"
    if not isinstance(backend, str):
        raise TypeError(
            f"backend must be a str such as 'gloo' or 'nccl', got {type(backend).__name__}"
        )
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError(
            "backend 'nccl' needs CUDA, but torch.cuda.is_available() is False; use 'gloo'"
        )
    return backend


def initialize(
    backend: str | None = None,
    timeout: float | timedelta | None = None,
    *,
    failure_timeout: float | None = None,
    init_method: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    **pg_kwargs: Any,
) -> None:
    """Creates the process group from the launcher's environment (no-op without a launcher).

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
    (as set by torchrun or :func:`spawn`); ``init_method``, ``rank`` and ``world_size``
    create the group without a launcher, as in Ignite (``"tcp://HOST:PORT"`` or
    ``"file:///shared/path"``, or ``"env://"`` with ``MASTER_ADDR``/``MASTER_PORT`` set).
    Backend ``nccl`` when CUDA is available, else
    ``gloo``; under NCCL the CUDA device is set from ``LOCAL_RANK`` and a gloo side group is
    created for CPU agreement. At world size > 1 a watchdog thread ends this process when
    another rank reports a failure, and reports a hang when an agreement or checkpoint
    collective waits longer than ``DISTENGINE_HANG_TIMEOUT`` (default 600 s). Under
    torchrun's agent or :func:`spawn` the same thread ends this process (exit status 1)
    when its launcher is gone, so a SIGKILLed agent leaves no orphan. Calling it again is
    a no-op. You rarely need to call it: any distengine call that needs the group
    initializes it on first use.

    Args:
        backend: ``"gloo"``, ``"nccl"`` or another torch backend; default as above.
        timeout: bound on every collective, in seconds or a ``timedelta`` (default 30 min).
        failure_timeout: seconds within which every rank ends after one rank reported a
            failure (default ``DISTENGINE_FAILURE_TIMEOUT`` or 10).
        init_method: ``"env://"`` (default), ``"tcp://HOST:PORT"`` (rank 0 hosts the
            store there) or ``"file:///path"`` (a file every rank can open).
        rank: this process's rank (with ``init_method``; default ``RANK``).
        world_size: number of processes (with ``init_method``; default ``WORLD_SIZE``).
        **pg_kwargs: passed to ``torch.distributed.init_process_group``.

    Raises:
        ValueError: incomplete launcher variables, ``nccl`` without CUDA, non-positive
            timeouts, a malformed ``DISTENGINE_HANG_TIMEOUT``, a backend different from the
            one already initialized, or an ``init_method``/``rank``/``world_size`` that is
            invalid or contradicts the environment.
        RuntimeError: ``init_method`` given while a process group created elsewhere exists.
        TypeError: a timeout or backend of the wrong type.

    Example:
        >>> import distengine.distributed as idist
        >>> idist.initialize()  # under torchrun: creates the group; alone: nothing to do
        >>> idist.get_world_size() >= 1
        True
        >>> # without a launcher, on each of 2 processes (on 2 machines, here):
        >>> idist.initialize("gloo", init_method="tcp://10.0.0.1:23456", rank=r, world_size=2)  # doctest: +SKIP
    """
    global _runtime, _finalized, _atexit_registered
    with _LOCK:
        meet = None
        if init_method is not None or rank is not None or world_size is not None:
            meet = rendezvous.resolve(init_method, rank, world_size)
        if _runtime is not None and _runtime.pid == os.getpid():
            if backend is not None and backend != _runtime.backend:
                raise ValueError(
                    f"already initialized with backend {_runtime.backend!r}, got backend={backend!r}"
                )
            return
        if _in_worker():
            raise RuntimeError(
                "initialize() cannot run in a DataLoader worker or a forked child of a rank"
            )
        if meet is not None and dist.is_initialized():
            raise RuntimeError(
                "a process group exists already (created with torch.distributed.init_process_group); "
                f"initialize(init_method={meet.init_method!r}) cannot create another"
            )
        env = meet.env if meet is not None else read_env()
        if env is None and dist.is_initialized():
            env = _env_from_group()
        pg_timeout = _as_timedelta(timeout, "timeout", DEFAULT_TIMEOUT)
        ft = failure_timeout_from_env() if failure_timeout is None else failure_timeout
        if isinstance(ft, bool) or not isinstance(ft, (int, float)) or not ft > 0:
            raise ValueError(f"failure_timeout must be a number of seconds > 0, got {ft!r}")
        hang_timeout = hang_timeout_from_env()
        _finalized = False
        if env is None:
            return
        parent = launcher_pid()
        if dist.is_initialized():
            current = dist.get_backend()
            if backend is not None and backend != current:
                raise ValueError(
                    f"the process group already uses backend {current!r}, got backend={backend!r}"
                )
            backend, owns_group = current, False
        else:
            backend, owns_group = _resolve_backend(backend), True

        if backend == "nccl":
            torch.cuda.set_device(env.local_rank)
        if owns_group:
            base, store = meet.connect(pg_timeout) if meet else connect_store(env, pg_timeout)
            dist.init_process_group(
                backend,
                store=store,
                rank=env.rank,
                world_size=env.world_size,
                timeout=pg_timeout,
                **pg_kwargs,
            )
        else:
            # Adopted group (the user called init_process_group): its store may live
            # anywhere, so reuse it rather than guess an address.
            base = store = dist.distributed_c10d._get_default_store()
        cpu_group = None
        if "gloo" not in dist.get_backend() and env.world_size > 1:
            cpu_group = dist.new_group(backend="gloo", timeout=pg_timeout)
        rt = Runtime(
            env=env,
            backend=dist.get_backend(),
            timeout=pg_timeout,
            failure_timeout=float(ft),
            store=store,
            keys=dist.PrefixStore("distengine", store),
            base_store=base,
            owns_group=owns_group,
            cpu_group=cpu_group,
            world_ref=weakref.ref(dist.GroupMember.WORLD),
            init_method=meet.init_method if meet is not None else "env://",
            hang_timeout=hang_timeout,
        )
        if env.world_size > 1:
            if not owns_group:
                rt.watch_store = rt.keys
            elif meet is not None:
                rt.watch_store = meet.watch(pg_timeout)
            else:
                rt.watch_store = watch_connection(env, pg_timeout)
        if env.world_size > 1 or parent is not None:
            rt.watchdog = FailureWatchdog(
                rt.watch_store,
                env.rank,
                env.world_size,
                rt.failure_timeout,
                hang_timeout=hang_timeout if env.world_size > 1 else None,
                launcher_pid=parent,
                hosts_store=rt.hosts_store,
            )
            rt.watchdog.start()
        if env.world_size > 1:
            rt.previous_excepthook = sys.excepthook
            sys.excepthook = _excepthook
        _runtime = rt
        if not _atexit_registered:
            atexit.register(_at_exit)
            _atexit_registered = True


def _adopted_alive(rt: Runtime) -> bool:
    """Whether the default group is still the one ``rt`` adopted."""
    world = dist.GroupMember.WORLD
    return world is not None and rt.world_ref is not None and rt.world_ref() is world


def _forget_adopted(rt: Runtime) -> None:
    """Drops the runtime of a group the user created and has destroyed since (no teardown of ours)."""
    global _runtime
    with _LOCK:
        if _runtime is not rt:
            return
        _runtime = None
        if rt.watchdog is not None:
            rt.watchdog.stop()
        if sys.excepthook is _excepthook:
            sys.excepthook = rt.previous_excepthook or sys.__excepthook__
        rt.cpu_group = None
        rt.subgroups.clear()
        rt.watch_store = rt.keys = rt.store = rt.base_store = None  # type: ignore[assignment]


def resync() -> None:
    """Adopts the process group that exists now (see ``idist.sync``); forgets a destroyed adopted one."""
    global _finalized
    with _LOCK:
        rt = _runtime
        if rt is not None and rt.pid == os.getpid() and not rt.owns_group:
            if not _adopted_alive(rt):
                _forget_adopted(rt)
        if _runtime is None and dist.is_initialized() and not _in_worker():
            _finalized = False
            initialize()


def hint_local_rank(index: int) -> None:
    """Sets the local rank of a group made without ``LOCAL_RANK`` (see ``idist.set_local_rank``)."""
    with _LOCK:
        rt = _runtime if _runtime is not None and _runtime.pid == os.getpid() else None
        launched = rt is not None and rt.owns_group and rt.init_method == "env://"
        if rt is not None and launched and rt.env.local_rank != index:
            raise ValueError(
                f"set_local_rank({index}) contradicts LOCAL_RANK={rt.env.local_rank} of the launcher"
            )
        rendezvous.set_local_rank_hint(index)
        if rt is not None and not launched:
            rt.env = dataclasses.replace(rt.env, local_rank=index)


def notify_failure(exc: BaseException) -> None:
    """Marks the job failed: every other rank ends (status 1) within the failure timeout.

    Writes this rank's exception into the store, where the watchdog of every peer sees it
    within a fraction of a second, even while that peer is blocked in a collective. This
    process then has ``failure_timeout`` seconds to end (its traceback, its
    ``EXCEPTION_RAISED`` handlers); at exit it skips teardown and exits with status 1.
    The engine calls it when an exception leaves ``run`` at world size > 1, and an uncaught
    exception calls it too. No-op without a process group or at world size 1.

    Args:
        exc: the exception that ends the job.

    Example:
        >>> import distengine.distributed as idist
        >>> idist.notify_failure(ValueError("boom"))  # alone: nothing to notify
    """
    rt = _runtime
    if rt is None or rt.pid != os.getpid() or rt.env.world_size == 1 or rt.failed:
        return
    rt.failed = True
    if rt.watchdog is not None:
        rt.watchdog.mark_own_failure()
    try:
        record_failure(rt.keys, rt.env.rank, exc)
        if rt.watchdog is not None:
            rt.watchdog.acknowledge(rt.keys)
    except Exception as err:  # the store's host may be gone already; peers then end by timeout
        sys.stderr.write(
            f"[distengine] rank {rt.env.rank}: could not report the failure to the store: {err}\n"
        )


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    rt = _runtime
    notify_failure(exc)
    previous = (
        rt.previous_excepthook if rt is not None and rt.previous_excepthook else sys.__excepthook__
    )
    previous(exc_type, exc, tb)


def _close_handshake(rt: Runtime) -> None:
    """Keeps the store's host (rank 0 without an agent) alive until every rank stopped using it.

    Otherwise a peer's watchdog would find the store gone while that peer is still finishing.
    The host waits at most ``failure_timeout``; its watchdog keeps running meanwhile, so a
    peer failing at the very end still ends it.
    """
    try:
        if rt.hosts_store:
            if rt.keys.add(_CLOSED, 1) < rt.env.world_size:
                rt.keys.wait([_ALL_CLOSED], timedelta(seconds=rt.failure_timeout))
        else:
            if rt.watchdog is not None:
                rt.watchdog.stop()
            if rt.keys.add(_CLOSED, 1) == rt.env.world_size:
                rt.keys.set(_ALL_CLOSED, "1")
    except Exception:  # a peer is late or the host is gone: nothing more to coordinate
        pass


def finalize() -> None:
    """Tears down what :func:`initialize` created, in an order that exits cleanly.

    Releases the DDP modules made by :func:`auto_model`, stops the watchdog, destroys the
    process groups distengine created and drops the store connections. Afterwards this
    process is a job of one again (rank 0, world size 1) until :func:`initialize` is called.
    Runs at interpreter exit too. After this rank reported a failure it does nothing: the
    exit path ends the process with status 1 instead.

    Example:
        >>> import distengine.distributed as idist
        >>> idist.finalize()
        >>> idist.get_world_size()
        1
    """
    global _runtime, _finalized
    with _LOCK:
        rt = _runtime
        _finalized = True
        if rt is None or rt.pid != os.getpid():
            return
        if rt.failed:
            return
        release_ddp_modules()
        rt.subgroups.clear()  # like the DDP modules: no reference may outlive the groups
        if rt.env.world_size > 1:
            _close_handshake(rt)
        if rt.watchdog is not None:
            rt.watchdog.stop()
        if sys.excepthook is _excepthook:
            sys.excepthook = rt.previous_excepthook or sys.__excepthook__
        if rt.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        _runtime = None
        rt.cpu_group = None
        # Stores last: the group must be gone before its store (docs/internals.md).
        rt.watch_store = rt.keys = rt.store = rt.base_store = None  # type: ignore[assignment]


def _at_exit() -> None:
    rt = _runtime
    if rt is None or rt.pid != os.getpid():
        return
    if rt.failed or (rt.watchdog is not None and rt.watchdog.ending):
        # Peers are dying: tearing down could block on them or abort in a destructor.
        if rt.failed and rt.hosts_store:
            # Our store dies with us: first let every peer read why the job failed.
            try:
                rt.keys.wait([ALL_RELEASED], timedelta(seconds=rt.failure_timeout))
            except Exception:
                pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(FAILURE_EXIT_CODE)
    try:
        finalize()
    except Exception as err:
        sys.stderr.write(f"[distengine] finalize at exit failed: {err}\n")
