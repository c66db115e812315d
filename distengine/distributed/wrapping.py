"""``auto_model`` / ``auto_optim``: put a model on this rank's device and wrap it in DDP when needed."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from . import queries
from .teardown import track_ddp_module

__all__ = ["auto_model", "auto_optim"]


def auto_model(model: torch.nn.Module, sync_bn: bool = False, **ddp_kwargs: Any) -> torch.nn.Module:
    """Moves ``model`` to :func:`device` and wraps it in DDP at world size > 1.

    distengine remembers the DDP wrappers it creates and releases them in
    :func:`finalize` (and at interpreter exit) before the process group is destroyed,
    which makes the exit of a finished job deterministic on torch 2.13 (see
    PLATFORM_NOTES.md). After ``finalize`` the wrapper cannot run forward passes; its
    ``.module`` can. Checkpoints strip DDP's ``module.`` prefix, so a state dict saved
    from the wrapper loads into the bare model.

    Args:
        model: the model.
        sync_bn: convert BatchNorm layers to ``SyncBatchNorm`` (needs NCCL).
        **ddp_kwargs: passed to ``DistributedDataParallel`` (``find_unused_parameters`` …).

    Returns:
        The model on its device: DDP-wrapped at world size > 1, itself otherwise. A model
        that already is a DDP module is only moved.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        ValueError: ``sync_bn=True`` on a backend other than NCCL.

    Example:
        >>> import torch, distengine.distributed as idist
        >>> model = idist.auto_model(torch.nn.Linear(4, 2))
        >>> next(model.parameters()).device == idist.device()
        True
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"auto_model expects a torch.nn.Module, got {type(model).__name__}")
    dev = queries.device()
    model = model.to(dev)
    if queries.get_world_size() == 1 or isinstance(model, DistributedDataParallel):
        return model
    backend = queries.backend() or ""
    if sync_bn:
        if "nccl" not in backend:
            raise ValueError(
                f"sync_bn=True needs the nccl backend (SyncBatchNorm runs on CUDA), got backend {backend!r}"
            )
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if dev.type == "cuda":
        ddp_kwargs.setdefault("device_ids", [dev.index])
    wrapped = DistributedDataParallel(model, **ddp_kwargs)
    track_ddp_module(wrapped)
    return wrapped


def auto_optim(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Returns ``optimizer`` ready for this job (plain DDP needs no wrapper).

    Kept for Ignite compatibility: code written as ``idist.auto_optim(opt)`` runs unchanged.

    Raises:
        TypeError: ``optimizer`` is not a ``torch.optim.Optimizer``.

    Example:
        >>> import torch, distengine.distributed as idist
        >>> model = torch.nn.Linear(2, 2)
        >>> opt = idist.auto_optim(torch.optim.SGD(model.parameters(), lr=0.1))
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"auto_optim expects a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    return optimizer
