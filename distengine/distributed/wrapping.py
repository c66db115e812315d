"""``auto_model`` / ``auto_optim``: put a model on this rank's device; wrap it in DDP or shard it
with FSDP2 when needed."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from . import queries, sharded
from .agreement import ride_gradients
from .teardown import track_ddp_module

__all__ = ["auto_model", "auto_optim"]


def auto_model(
    model: torch.nn.Module,
    sync_bn: bool = False,
    sharding: str | None = None,
    *,
    shard_modules: Callable[[torch.nn.Module], bool] | Iterable[type] | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """Moves ``model`` to :func:`device` and, at world size > 1, wraps or shards it.

    ``sharding`` chooses how a model is spread over the ranks:

    - ``"ddp"`` (the default): every rank holds the whole model, wrapped in
      ``DistributedDataParallel`` (gradients all-reduced);
    - ``"fsdp"``: FSDP2 (``fully_shard``) on the device mesh of the world: each rank holds
      a shard of every parameter (DTensors), gathered for forward and backward; the
      submodules chosen by ``shard_modules`` (default: the children of every
      ``ModuleList``, e.g. a transformer's blocks) are sharded as units of their own,
      then the root. ``Checkpoint`` saves such a model (and its optimizer) shard by shard,
      and loads it at any world size. At world size 1 the model stays whole, but its
      checkpoints keep the sharded layout;
    - ``"none"``: the model is only moved to the device.

    distengine remembers the DDP wrappers it creates and releases them in
    :func:`finalize` (and at interpreter exit) before the process group is destroyed,
    which makes the exit of a finished job deterministic on torch 2.13 (see
    ``docs/internals.md``). After ``finalize`` the wrapper cannot run forward passes; its
    ``.module`` can. Checkpoints strip DDP's ``module.`` prefix, so a state dict saved
    from the wrapper loads into the bare model.

    Args:
        model: the model.
        sync_bn: convert BatchNorm layers to ``SyncBatchNorm`` (needs NCCL).
        sharding: ``"ddp"`` (``None`` means the same), ``"fsdp"`` or ``"none"``.
        shard_modules: with ``"fsdp"``: which submodules are sharded as units of their own,
            a predicate ``module -> bool`` or a tuple of module types.
        **kwargs: passed to ``DistributedDataParallel`` (``find_unused_parameters`` …) or,
            with ``"fsdp"``, to ``fully_shard`` (``mp_policy``, ``reshard_after_forward``,
            ``offload_policy``).

    Returns:
        The model on its device: DDP-wrapped or sharded at world size > 1, itself
        otherwise. A model that already is a DDP module is only moved; one already
        sharded with ``fully_shard`` is returned as it is.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        ValueError: an unknown ``sharding``, ``shard_modules`` without ``"fsdp"``,
            ``sync_bn=True`` on a backend other than NCCL, or a CUDA model on gloo with
            ``"fsdp"``.

    Example:
        >>> import torch, distengine.distributed as idist
        >>> model = idist.auto_model(torch.nn.Linear(4, 2))
        >>> next(model.parameters()).device == idist.device()
        True
        >>> lm = idist.auto_model(torch.nn.Linear(4, 2), sharding="fsdp")  # sharded at world size > 1
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"auto_model expects a torch.nn.Module, got {type(model).__name__}")
    mode = "ddp" if sharding is None else sharding
    if mode not in sharded.SHARDING_MODES:
        raise ValueError(
            f"sharding must be one of {sharded.SHARDING_MODES} (or None for 'ddp'), got {sharding!r}"
        )
    if shard_modules is not None and mode != "fsdp":
        raise ValueError(f"shard_modules applies to sharding='fsdp' only, got sharding={mode!r}")
    dev = queries.device()
    if mode == "fsdp" and _is_fsdp(model):
        return sharded.shard_model(model, dev)
    model = model.to(dev)
    world = queries.get_world_size()
    if mode == "none" or world == 1 and mode == "ddp":
        return model
    if mode == "ddp" and isinstance(model, DistributedDataParallel):
        return model
    if sync_bn and world > 1:
        backend = queries.backend() or ""
        if "nccl" not in backend:
            raise ValueError(
                f"sync_bn=True needs the nccl backend (SyncBatchNorm runs on CUDA), got backend {backend!r}"
            )
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if mode == "fsdp":
        return sharded.shard_model(model, dev, shard_modules, **kwargs)
    if dev.type == "cuda":
        kwargs.setdefault("device_ids", [dev.index])
    wrapped = DistributedDataParallel(model, **kwargs)
    track_ddp_module(wrapped)
    ride_gradients(wrapped)  # on CPU: the engine's agreements ride on its all-reduce
    return wrapped


def _is_fsdp(model: torch.nn.Module) -> bool:
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


def auto_optim(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Returns ``optimizer`` ready for this job (DDP and FSDP2 need no wrapper).

    Kept for Ignite compatibility: code written as ``idist.auto_optim(opt)`` runs unchanged.
    With ``auto_model(model, sharding="fsdp")``, build the optimizer from the model that
    ``auto_model`` returned: its parameters are the sharded ones, and so is its state.

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
