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

from typing import Any

from .agreement import (
    AgreementChannel,
    PendingAgreement,
    agree_flags,
    check_in_sync,
    rendezvous_check,
    start_agreement,
)
from .collectives import (
    all_gather,
    all_gather_tensors_with_shapes,
    all_reduce,
    barrier,
    broadcast,
    one_rank_first,
)
from .groups import new_group
from .hangs import register_status_provider, unregister_status_provider, watch_collective
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
from .runtime import finalize, initialize, notify_failure
from .utils import (
    available_backends,
    has_hvd_support,
    has_native_dist_support,
    has_xla_support,
    hostname,
    one_rank_only,
    set_local_rank,
    show_config,
    sync,
)
from .wrapping import auto_model, auto_optim

__all__ = [
    "Parallel",
    "AgreementChannel",
    "PendingAgreement",
    "agree_flags",
    "all_gather",
    "all_gather_tensors_with_shapes",
    "all_reduce",
    "auto_dataloader",
    "auto_model",
    "auto_optim",
    "available_backends",
    "backend",
    "barrier",
    "broadcast",
    "check_in_sync",
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
    "notify_failure",
    "one_rank_first",
    "one_rank_only",
    "register_status_provider",
    "rendezvous_check",
    "set_local_rank",
    "show_config",
    "spawn",
    "start_agreement",
    "sync",
    "unregister_status_provider",
    "watch_collective",
]


def __getattr__(name: str) -> Any:
    """``idist.auto_dataloader``: Ignite's name for :func:`distengine.data.auto_dataloader`.

    The loader builder belongs to :mod:`distengine.data`, a layer above this package, and
    Ignite users call it as ``ignite.distributed.auto_dataloader``. It is imported on first
    access, so no module of this package imports the data layer when it is loaded: this is
    the one upward import the layer contract allows (docs/internals.md, "Layers").
    """
    if name == "auto_dataloader":
        from distengine.data.loader import auto_dataloader

        return auto_dataloader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "auto_dataloader"})
