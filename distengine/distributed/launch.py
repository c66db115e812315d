"""Starting ranks: ``spawn`` (N local processes over loopback) and Ignite's ``Parallel``.

``spawn`` is built on ``torch.multiprocessing.start_processes``. Its parent hosts the
job's store on a free port (the OS picks it, so concurrent jobs never collide), which
gives it two things torch's launcher alone does not: the rank that failed *first* (a peer
ended by the failure watchdog may exit before it), and the return value of every rank.
"""

from __future__ import annotations

import functools
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from . import queries, runtime
from .env import STORE_HOSTED_ENV, failure_timeout_from_env, read_env
from .watchdog import first_failure

__all__ = ["Parallel", "spawn"]

_INIT_KWARGS = ("timeout", "failure_timeout")
_LAUNCHER_VARS = (
    "TORCHELASTIC_USE_AGENT_STORE",
    "TORCHELASTIC_RESTART_COUNT",
    "GROUP_WORLD_SIZE",
    "GROUP_RANK",
)


def _result_key(rank: int) -> str:
    return f"spawn/result/{rank}"


def _job_keys(store: dist.Store) -> dist.Store:
    # Same prefixes as a rank's runtime under a hosted store (attempt 0, then distengine).
    return dist.PrefixStore("distengine", dist.PrefixStore("attempt_0", store))


def _spawned(
    local_rank: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    nprocs: int,
    port: int,
    backend: str | None,
    init_kwargs: dict[str, Any],
    environ: dict[str, str],
) -> None:
    """Body of each spawned process: environment, initialize, ``fn``, result, finalize."""
    # The caller's environment at the time of the call, whatever the start method: a
    # "spawn" child inherits it anyway, but a "forkserver" child would otherwise keep the
    # environment the server started with.
    os.environ.clear()
    os.environ.update(environ)
    for name in _LAUNCHER_VARS:
        os.environ.pop(name, None)
    os.environ.update(
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(nprocs),
        LOCAL_WORLD_SIZE=str(nprocs),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        **{STORE_HOSTED_ENV: "1"},
    )
    runtime.initialize(backend, **init_kwargs)
    try:
        result = fn(local_rank, *args)
    except Exception as exc:
        runtime.notify_failure(exc)
        raise  # torch.multiprocessing sends the traceback to the parent
    rt = runtime.active()
    assert rt is not None, "spawned ranks always have a runtime"
    rt.keys.set(_result_key(local_rank), pickle.dumps(result))
    runtime.finalize()


def _root_cause(keys: dist.Store, exc: Exception, pids: list[int]) -> Exception:
    """The exception of the rank that failed first, when it is not the one torch reported."""
    try:
        record = first_failure(keys)
    except Exception:
        return exc
    if record is None or record.rank == exc.error_index or not record.traceback:
        return exc
    msg = f"\n\n-- Process {record.rank} terminated with the following error:\n{record.traceback}"
    return mp.ProcessRaisedException(msg, record.rank, pids[record.rank])


def _ignite_order(
    backend: str, fn: Any, args: Any, kwargs_dict: Any, start_method: str, kwargs: dict[str, Any]
) -> list[Any]:
    """``spawn(backend, fn, args, kwargs_dict=None, nproc_per_node=1, **kwargs)``, Ignite's order."""
    nproc = kwargs.pop("nproc_per_node", 1)
    nnodes, node_rank = kwargs.pop("nnodes", None), kwargs.pop("node_rank", None)
    if nnodes not in (None, 1) or node_rank not in (None, 0):
        raise ValueError(
            f"spawn starts processes on this node only (nnodes=1, node_rank=0), got nnodes={nnodes}, "
            f"node_rank={node_rank}: start each node with torchrun (see launchers/) instead"
        )
    kwargs.pop("master_addr", None)  # one node: the ranks meet on a loopback port the OS picks
    kwargs.pop("master_port", None)
    init_method = kwargs.pop("init_method", None)
    if init_method not in (None, "env://"):
        raise ValueError(
            f"spawned ranks meet through their parent's store; init_method={init_method!r} is "
            "supported under a launcher only (idist.initialize)"
        )
    if kwargs_dict is not None and not isinstance(kwargs_dict, Mapping):
        raise TypeError(f"kwargs_dict must be a dict, got {type(kwargs_dict).__name__}")
    target = functools.partial(fn, **kwargs_dict) if kwargs_dict else fn
    return spawn(target, nproc, backend, args, start_method=start_method, **kwargs)


def spawn(
    fn: Callable[..., Any],
    nprocs: int,
    backend: str | None = "gloo",
    args: Sequence[Any] = (),
    *,
    start_method: str = "spawn",
    **init_kwargs: Any,
) -> list[Any]:
    """Runs ``fn(local_rank, *args)`` on ``nprocs`` local processes over loopback.

    Ignite's argument order works too: ``spawn("gloo", fn, args=(...), kwargs_dict={...},
    nproc_per_node=4)`` (one node; ``init_method`` ``None`` or ``"env://"``).

    Each process gets the launcher variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR=127.0.0.1``, ``MASTER_PORT``), initializes the
    process group, runs ``fn`` and finalizes. If a process raises, all of them end (the
    others within the failure timeout) and the exception of the rank that failed first
    is raised here, as ``torch.multiprocessing.ProcessRaisedException`` carrying that
    rank's traceback. Note the argument order differs from Ignite's
    ``spawn(backend, fn, args, ...)``.

    Args:
        fn: a picklable (module-level) function ``fn(local_rank, *args)``.
        nprocs: number of processes.
        backend: process-group backend; ``None``: ``nccl`` with CUDA, else ``gloo``.
        args: further positional arguments of ``fn`` (picklable).
        start_method: ``"spawn"`` (default, safe with threads and CUDA), ``"forkserver"`` or
            ``"fork"``. With any of them, every process sees the caller's environment as it
            is at the time of the call (a fork server's children would otherwise keep the
            environment the server started with).
        **init_kwargs: ``timeout`` and ``failure_timeout``, passed to :func:`initialize`.

    Returns:
        The return values of ``fn``, indexed by rank (they must be picklable).

    Raises:
        torch.multiprocessing.ProcessRaisedException: a rank raised (its traceback inside).
        torch.multiprocessing.ProcessExitedException: a rank died without an exception.
        ValueError: ``nprocs`` < 1 or an unknown keyword; in Ignite's order, more than
            one node or an ``init_method`` other than ``"env://"``.
        TypeError: ``fn`` is not callable or ``args`` is not a sequence.

    Example:
        >>> import distengine.distributed as idist
        >>> def job(local_rank):
        ...     return idist.all_reduce(local_rank + 1)
        >>> # starts 2 processes, which import ``job`` from its module (not from here):
        >>> idist.spawn(job, 2)  # doctest: +SKIP
        [3, 3]
    """
    if isinstance(fn, str) and callable(nprocs):  # Ignite's order: (backend, fn, args, kwargs_dict)
        if isinstance(backend, (tuple, list)):  # args given third, by position
            ignite_args, kwargs_dict = backend, (args if isinstance(args, Mapping) else None)
        else:
            ignite_args, kwargs_dict = args, None
        kwargs_dict = init_kwargs.pop("kwargs_dict", kwargs_dict)
        return _ignite_order(fn, nprocs, ignite_args, kwargs_dict, start_method, init_kwargs)
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if isinstance(nprocs, bool) or not isinstance(nprocs, int) or nprocs < 1:
        raise ValueError(f"nprocs must be an int >= 1, got {nprocs!r}")
    if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
        raise TypeError(
            f"args must be a tuple or list of fn's arguments, got {type(args).__name__}"
        )
    unknown = sorted(set(init_kwargs) - set(_INIT_KWARGS))
    if unknown:
        raise ValueError(
            f"spawn accepts the keywords start_method, {', '.join(_INIT_KWARGS)}; got {unknown}"
        )
    failure_timeout = init_kwargs.get("failure_timeout") or failure_timeout_from_env()
    server = dist.TCPStore(
        "127.0.0.1", 0, None, is_master=True, wait_for_workers=False, timeout=timedelta(minutes=5)
    )
    keys = _job_keys(server)
    ctx = mp.start_processes(
        _spawned,
        args=(fn, tuple(args), nprocs, server.port, backend, dict(init_kwargs), dict(os.environ)),
        nprocs=nprocs,
        join=False,
        start_method=start_method,
    )
    try:
        # grace_period: after a failure, the others get this long to be ended by their
        # watchdog (with its message) before torch sends SIGTERM, then SIGKILL.
        while not ctx.join(grace_period=failure_timeout):
            pass
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        raise _root_cause(keys, exc, ctx.pids()) from None
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
                proc.join()
    return [pickle.loads(keys.get(_result_key(r))) for r in range(nprocs)]


class Parallel:
    """Ignite's launcher context: torchrun-launched, self-spawning, or a job of one.

    - Under a launcher (``RANK``/``WORLD_SIZE`` set): entering initializes the process
      group, :meth:`run` calls ``fn(local_rank, *args, **kwargs)``, leaving finalizes.
    - With ``init_method`` ``"tcp://..."``/``"file://..."`` and ``RANK``/``WORLD_SIZE``
      (no ``MASTER_ADDR``): the same, meeting through that init method.
    - With ``nproc_per_node`` and no launcher: :meth:`run` starts the processes itself
      through :func:`spawn`, on this node.
    - Neither: :meth:`run` calls ``fn(0, *args, **kwargs)`` in this process.

    Args:
        backend: process-group backend; ``None``: ``nccl`` with CUDA, else ``gloo``.
        nproc_per_node: processes to spawn when no launcher started this one.
        nnodes: number of nodes. Spawning covers one node; under a launcher it must
            agree with the launcher's (``WORLD_SIZE // LOCAL_WORLD_SIZE``).
        node_rank: index of this node (under a launcher: must agree with it).
        master_addr: accepted for Ignite compatibility with ``nnodes=1`` (spawned ranks
            meet on a loopback port the OS picks).
        master_port: as ``master_addr``.
        init_method: ``"env://"``, ``"tcp://HOST:PORT"`` or ``"file:///path"``, passed to
            :func:`initialize` under a launcher; spawning supports only ``"env://"``.
        **spawn_kwargs: passed to :func:`spawn` (``start_method``, ``timeout``,
            ``failure_timeout``); ``timeout``/``failure_timeout`` also apply under a launcher.

    Raises:
        ValueError: ``nproc_per_node`` or ``nnodes`` < 1, ``nnodes > 1`` without a
            launcher, arguments that contradict the launcher, an unknown backend, or
            ``init_method`` other than ``"env://"`` when spawning.

    Example:
        >>> import distengine.distributed as idist
        >>> def training(local_rank, config):
        ...     return idist.get_world_size()
        >>> with idist.Parallel(backend="gloo") as parallel:
        ...     parallel.run(training, {"lr": 0.1})
        1
    """

    def __init__(
        self,
        backend: str | None = None,
        nproc_per_node: int | None = None,
        nnodes: int | None = None,
        node_rank: int | None = None,
        master_addr: str | None = None,
        master_port: int | None = None,
        init_method: str | None = None,
        **spawn_kwargs: Any,
    ) -> None:
        for name, value in (("nproc_per_node", nproc_per_node), ("nnodes", nnodes)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")
        if backend is not None and backend not in dist.Backend.backend_list:
            raise ValueError(
                f"Unknown backend {backend!r}. Available backends: {dist.Backend.backend_list}"
            )
        if init_method is not None and not isinstance(init_method, str):
            raise TypeError(f"init_method must be a str, got {type(init_method).__name__}")
        meets = init_method is not None and not init_method.startswith("env://")
        env = read_env() if not meets or "MASTER_ADDR" in os.environ else None
        launched = env is not None or (meets and "RANK" in os.environ)
        if env is not None:
            given = (nproc_per_node, nnodes, node_rank)
            actual = (env.local_world_size, env.nnodes, env.rank // env.local_world_size)
            for name, value, real in zip(("nproc_per_node", "nnodes", "node_rank"), given, actual):
                if value is not None and value != real:
                    raise ValueError(
                        f"{name}={value} contradicts the launcher that started this process "
                        f"({name} is {real} there)"
                    )
        elif not launched:
            if nnodes not in (None, 1) or node_rank not in (None, 0):
                raise ValueError(
                    f"Parallel spawns processes on this node only (nnodes=1, node_rank=0), got "
                    f"nnodes={nnodes}, node_rank={node_rank}: start each node with torchrun "
                    "(see launchers/) instead"
                )
            if nproc_per_node is not None and init_method not in (None, "env://"):
                raise ValueError(
                    f"spawned ranks meet through their parent's store; init_method={init_method!r} "
                    "is supported under a launcher only (leave it None to spawn)"
                )
        self.backend = backend
        self.nproc_per_node = nproc_per_node
        self.nnodes = nnodes
        self.node_rank = node_rank
        self.master_addr = master_addr
        self.master_port = master_port
        self.init_method = init_method
        self.spawn_kwargs = spawn_kwargs
        self._launched = launched
        self._initialized = False

    def __enter__(self) -> Parallel:
        if self._launched:
            init_kwargs = {k: v for k, v in self.spawn_kwargs.items() if k in _INIT_KWARGS}
            if self.init_method is not None:
                init_kwargs["init_method"] = self.init_method
            runtime.initialize(self.backend, **init_kwargs)
            self._initialized = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if not self._initialized:
            return
        self._initialized = False
        if isinstance(exc, Exception):
            runtime.notify_failure(exc)
        runtime.finalize()

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Runs ``fn(local_rank, *args, **kwargs)`` on every rank of this job.

        Returns:
            ``fn``'s return value; when this call spawned the processes, the list of them
            indexed by rank.
        """
        if self._launched:
            return fn(queries.get_local_rank(), *args, **kwargs)
        if self.nproc_per_node is not None:
            target = functools.partial(fn, **kwargs) if kwargs else fn
            backend = self.backend or ("nccl" if torch.cuda.is_available() else "gloo")
            return spawn(
                target, self.nproc_per_node, backend=backend, args=args, **self.spawn_kwargs
            )
        return fn(0, *args, **kwargs)
