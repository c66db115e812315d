"""Where ranks meet when :func:`initialize` is given ``init_method``, ``rank`` or ``world_size``.

torch's three init methods, as Ignite's ``initialize`` takes them:

- ``"env://"`` (the default): ``MASTER_ADDR``/``MASTER_PORT`` from the environment, rank
  and world size from ``RANK``/``WORLD_SIZE`` or from the arguments;
- ``"tcp://HOST:PORT"``: rank 0 hosts the store at ``HOST:PORT``, the others connect;
- ``"file:///path"``: a store in a file that every rank can open (a shared file system
  across nodes).

Each gives a :class:`~distengine.distributed.env.LauncherEnv` (the same description a
launcher gives) and two store connections: one for the process group and distengine's
keys, and one for the failure watchdog, exactly as under a launcher.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlparse

import torch.distributed as dist

from .env import LauncherEnv, read_env
from .stores import connect_store, watch_connection

__all__ = ["Rendezvous", "local_rank_hint", "resolve", "set_local_rank_hint"]

# Process-wide on purpose: Ignite's set_local_rank is called before any group exists (so
# before a Runtime could hold it) and applies to the groups this process makes afterwards.
_local_rank_hint: int | None = None


def set_local_rank_hint(index: int | None) -> None:
    """Remembers the local rank for groups made without ``LOCAL_RANK`` (see ``set_local_rank``)."""
    global _local_rank_hint
    _local_rank_hint = index


def local_rank_hint() -> int | None:
    """The index given to ``set_local_rank``, if any."""
    return _local_rank_hint


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def _pick(name: str, given: int | None, env_name: str) -> int | None:
    from_env = _env_int(env_name)
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int):
            raise TypeError(f"{name} must be an int, got {type(given).__name__}")
        if from_env is not None and from_env != given:
            raise ValueError(f"{name}={given} contradicts the environment's {env_name}={from_env}")
        return given
    return from_env


@dataclass(frozen=True)
class Rendezvous:
    """An init method resolved for this process.

    Attributes:
        env: rank, sizes and (for ``env://``/``tcp://``) the store address.
        init_method: the URL, normalised (``"env://"`` when none was given).
        path: the store file of ``file://``, else ``None``.
    """

    env: LauncherEnv
    init_method: str
    path: str | None = None

    def connect(self, timeout: timedelta) -> tuple[dist.Store, dist.Store]:
        """``(connection, store)`` for the process group, as :func:`.stores.connect_store`."""
        if self.path is None:
            return connect_store(self.env, timeout)
        store = self._file_store(timeout)
        return store, store

    def watch(self, timeout: timedelta) -> dist.Store:
        """A second connection for the watchdog thread (prefixed for distengine)."""
        if self.path is None:
            return watch_connection(self.env, timeout)
        return dist.PrefixStore("distengine", self._file_store(timeout))

    def _file_store(self, timeout: timedelta) -> dist.Store:
        # Two connections per rank: the file is removed once all 2 * world_size are closed.
        store = dist.FileStore(self.path, 2 * self.env.world_size)
        store.set_timeout(timeout)
        return store


def resolve(init_method: str | None, rank: int | None, world_size: int | None) -> Rendezvous | None:
    """Reads ``init_method``, ``rank`` and ``world_size`` (arguments first, then the environment).

    Returns ``None`` when the launcher's environment describes this process already
    (``env://`` under torchrun or :func:`spawn`, arguments agreeing with it) or when there
    is nothing to rendezvous with (``env://``, no launcher, no rank and world size): the
    caller then reads the environment as without arguments. The local rank comes from
    ``LOCAL_RANK``, else from ``set_local_rank``, else it is the rank (one node);
    ``LOCAL_WORLD_SIZE`` defaults to the world size.

    Raises:
        ValueError: an unknown scheme, a ``tcp://`` URL without host and port, ``rank``
            without ``world_size`` (or the reverse), a rank outside ``[0, world_size)``, or
            an argument that contradicts the environment.

    Example:
        >>> r = resolve("tcp://127.0.0.1:29500", rank=0, world_size=1)
        >>> (r.env.master_port, r.env.world_size)
        (29500, 1)
    """
    url = "env://" if init_method is None else init_method
    if not isinstance(url, str):
        raise TypeError(f"init_method must be a str such as 'env://', got {type(url).__name__}")
    parsed = urlparse(url)
    if parsed.scheme not in ("env", "tcp", "file"):
        raise ValueError(
            f"init_method must start with 'env://', 'tcp://' or 'file://', got {init_method!r}"
        )
    if parsed.scheme == "env":
        launcher = read_env() if "MASTER_ADDR" in os.environ else None
        if launcher is not None or (rank is None and world_size is None):
            _pick("rank", rank, "RANK")
            _pick("world_size", world_size, "WORLD_SIZE")
            return None
    if (rank is None) != (world_size is None) and parsed.scheme != "env":
        raise ValueError(
            f"give both rank and world_size (or neither, to read RANK and WORLD_SIZE), got "
            f"rank={rank!r} and world_size={world_size!r}"
        )
    rank = _pick("rank", rank, "RANK")
    world_size = _pick("world_size", world_size, "WORLD_SIZE")
    if rank is None or world_size is None:
        raise ValueError(
            f"init_method={url!r} needs the rank and the world size: pass rank= and world_size= "
            "or set RANK and WORLD_SIZE"
        )
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}"
        )
    local_world_size = _env_int("LOCAL_WORLD_SIZE") or world_size
    local_rank = _env_int("LOCAL_RANK")
    if local_rank is None:
        local_rank = _local_rank_hint if _local_rank_hint is not None else rank % local_world_size
    addr, port, path = "", 0, None
    if parsed.scheme == "env":
        addr = os.environ.get("MASTER_ADDR", "")
        port = _env_int("MASTER_PORT") or 0
        if not addr or not port:
            raise ValueError(
                "init_method 'env://' needs MASTER_ADDR and MASTER_PORT in the environment; "
                "or pass init_method='tcp://HOST:PORT'"
            )
    elif parsed.scheme == "tcp":
        if not parsed.hostname or not parsed.port:
            raise ValueError(f"init_method should be 'tcp://HOST:PORT', got {init_method!r}")
        addr, port = parsed.hostname, parsed.port
    else:
        path = parsed.path if not parsed.netloc else parsed.netloc + parsed.path
        if not path:
            raise ValueError(f"init_method should be 'file:///path/to/file', got {init_method!r}")
    env = LauncherEnv(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        local_world_size=local_world_size,
        nnodes=max(1, world_size // local_world_size),
        master_addr=addr,
        master_port=port,
        hosted_store=False,
        restart_count=0,
    )
    return Rendezvous(env=env, init_method=url, path=path)
