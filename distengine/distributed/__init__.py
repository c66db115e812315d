"""distengine's distributed runtime (the only package of distengine that imports torch.distributed).

Import it as ``idist``. Without launcher variables every call answers as a job of one
(rank 0, world size 1, collectives return their input); under torchrun or :func:`spawn`
the process group is created on first use.

Example:
    >>> import distengine.distributed as idist
    >>> idist.get_rank(), idist.get_world_size()
    (0, 1)
    >>> idist.all_reduce(2.5)
    2.5
"""

from .agreement import agree_flags, check_in_sync, rendezvous_check
from .collectives import all_gather, all_reduce, barrier, broadcast, one_rank_first
from .hangs import register_status_provider, unregister_status_provider, watch_collective
from .launch import Parallel, spawn
from .queries import (
    backend,
    device,
    get_local_rank,
    get_nnodes,
    get_rank,
    get_world_size,
    is_main_process,
)
from .runtime import finalize, initialize, notify_failure
from .wrapping import auto_model, auto_optim

__all__ = [
    "Parallel",
    "agree_flags",
    "all_gather",
    "all_reduce",
    "auto_dataloader",
    "auto_model",
    "auto_optim",
    "backend",
    "barrier",
    "broadcast",
    "check_in_sync",
    "device",
    "finalize",
    "get_local_rank",
    "get_nnodes",
    "get_rank",
    "get_world_size",
    "initialize",
    "is_main_process",
    "notify_failure",
    "one_rank_first",
    "register_status_provider",
    "rendezvous_check",
    "spawn",
    "unregister_status_provider",
    "watch_collective",
]

from .auto_data import auto_dataloader  # noqa: E402  (last: it imports distengine.data and engine)
