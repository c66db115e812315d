"""Rank and device queries: answer 0 / 1 / CPU in a job of one, create the group on first use otherwise."""

from __future__ import annotations

import torch

from . import runtime
from .env import LauncherEnv

__all__ = [
    "backend",
    "device",
    "get_local_rank",
    "get_nnodes",
    "get_node_rank",
    "get_nproc_per_node",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "model_name",
]


def _env() -> LauncherEnv | None:
    rt = runtime.active()
    if rt is not None:
        return rt.env
    return runtime.passive_env()


def get_rank() -> int:
    """Returns the global rank of this process (0 in a job of one).

    Example:
        >>> import distengine.distributed as idist
        >>> idist.get_rank()  # alone
        0
    """
    env = _env()
    return env.rank if env is not None else 0


def get_local_rank() -> int:
    """Returns the rank of this process on its node (``LOCAL_RANK``; 0 in a job of one).

    Example:
        >>> import distengine.distributed as idist
        >>> idist.get_local_rank()
        0
    """
    env = _env()
    return env.local_rank if env is not None else 0


def get_world_size() -> int:
    """Returns the number of processes in the job (1 without a launcher).

    Example:
        >>> import distengine.distributed as idist
        >>> idist.get_world_size()
        1
    """
    env = _env()
    return env.world_size if env is not None else 1


def get_nnodes() -> int:
    """Returns the number of nodes: torchrun's ``GROUP_WORLD_SIZE``, else ``WORLD_SIZE // LOCAL_WORLD_SIZE`` (1 alone).

    Example:
        >>> import distengine.distributed as idist
        >>> idist.get_nnodes()
        1
    """
    env = _env()
    return env.nnodes if env is not None else 1


def get_nproc_per_node() -> int:
    """Returns the number of processes on this node (``LOCAL_WORLD_SIZE``; 1 in a job of one).

    Example:
        >>> import distengine.distributed as idist
        >>> idist.get_nproc_per_node()
        1
    """
    env = _env()
    return env.local_world_size if env is not None else 1


def get_node_rank() -> int:
    """Returns the index of this node, ``RANK // LOCAL_WORLD_SIZE`` (torchrun numbers ranks node by node; 0 alone).

    Example:
        >>> import distengine.distributed as idist
        >>> idist.get_node_rank()
        0
    """
    env = _env()
    return env.rank // env.local_world_size if env is not None else 0


def model_name() -> str:
    """Returns ``"native-dist"`` when a torch process group is in use, ``"serial"`` in a job of one.

    Ignite's names; distengine has no XLA or Horovod model.

    Example:
        >>> import distengine.distributed as idist
        >>> idist.model_name()
        'serial'
    """
    return "native-dist" if runtime.active() is not None else "serial"


def backend() -> str | None:
    """Returns the backend of the default process group (``"gloo"``, ``"nccl"`` …), ``None`` in a job of one.

    Example:
        >>> import distengine.distributed as idist
        >>> idist.backend() is None  # alone
        True
    """
    rt = runtime.active()
    return rt.backend if rt is not None else None


def device() -> torch.device:
    """Returns the device this rank computes on.

    ``cuda:LOCAL_RANK`` under NCCL, ``cpu`` under other backends; in a job of one,
    ``cuda`` when CUDA is available (as in Ignite), else ``cpu``.

    Example:
        >>> import distengine.distributed as idist
        >>> model = torch.nn.Linear(2, 2).to(idist.device())
    """
    rt = runtime.active()
    if rt is None:
        if runtime.passive_env() is not None:
            return torch.device("cpu")
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if "nccl" in rt.backend:
        return torch.device(f"cuda:{rt.env.local_rank}")
    return torch.device("cpu")


def is_main_process() -> bool:
    """Returns whether this is global rank 0 (always ``True`` in a job of one).

    Example:
        >>> import distengine.distributed as idist
        >>> idist.is_main_process()
        True
    """
    return get_rank() == 0
