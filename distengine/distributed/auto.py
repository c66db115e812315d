"""Ignite's ``ignite.distributed.auto`` import path: the ``auto_*`` helpers and
:class:`DistributedProxySampler`.

``auto_dataloader``, ``auto_model`` and ``auto_optim`` are the ones of
:mod:`distengine.distributed` (re-exported here; ``auto_dataloader`` on first access, as in
the package: it belongs to :mod:`distengine.data`, the layer above).
:class:`DistributedProxySampler` shards any sampler of known length over the ranks, for a ``DataLoader`` built by hand: the loader
of ``auto_dataloader`` has its own sampler (the one that makes exact resume possible) and
refuses ``sampler=``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler
from torch.utils.data.distributed import DistributedSampler

from .queries import get_rank, get_world_size
from .wrapping import auto_model, auto_optim

__all__ = ["DistributedProxySampler", "auto_dataloader", "auto_model", "auto_optim"]  # noqa: F822  (auto_dataloader: __getattr__)


class DistributedProxySampler(DistributedSampler):
    """Shards a sampler (e.g. a ``WeightedRandomSampler``) over the ranks.

    Each pass draws the wrapped sampler's indices with torch's RNG seeded from
    ``seed + epoch`` (call :meth:`set_epoch`; the engine does it with the data pass),
    repeats them to a multiple of the world size, and gives rank ``r`` every
    ``num_replicas``-th index from position ``r``. As Ignite's, so the ranks' indices
    together are the wrapped sampler's for that seed; unlike Ignite's, the global RNG is
    left as it was (the draw happens in a forked RNG).

    Args:
        sampler: a ``torch.utils.data.Sampler`` with a constant ``len``, not itself
            distributed.
        num_replicas: the number of ranks (default: the world size).
        rank: this rank (default: the current rank).
        seed: added to the epoch to seed each pass.

    Raises:
        TypeError: ``sampler`` is not a ``Sampler``, has no length, or is already a
            ``DistributedSampler``.

    Example:
        >>> weights = torch.ones(10)
        >>> proxy = DistributedProxySampler(
        ...     torch.utils.data.WeightedRandomSampler(weights, 10), num_replicas=2, rank=0)
        >>> len(proxy)
        5
    """

    def __init__(
        self,
        sampler: Sampler,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(sampler, Sampler):
            raise TypeError(
                "Argument sampler should be instance of torch Sampler, "
                f"got {type(sampler).__name__}"
            )
        if isinstance(sampler, DistributedSampler):
            raise TypeError(
                "Argument sampler must not be a distributed sampler already, "
                f"got {type(sampler).__name__}"
            )
        if not hasattr(sampler, "__len__"):
            raise TypeError(
                f"Argument sampler should have length, {type(sampler).__name__} has none"
            )
        super().__init__(
            sampler,  # type: ignore[arg-type]  (only its length is used)
            num_replicas=get_world_size() if num_replicas is None else num_replicas,
            rank=get_rank() if rank is None else rank,
            shuffle=False,
            seed=seed,
        )
        self.sampler = sampler

    def __iter__(self) -> Iterator[int]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + self.epoch)
            indices: list[int] = []
            while len(indices) < self.total_size:
                drawn = list(self.sampler)
                if not drawn:
                    raise RuntimeError(
                        f"The wrapped {type(self.sampler).__name__} has length "
                        f"{len(self.sampler)} but yielded no index"
                    )
                indices += drawn
        return iter(indices[self.rank : self.total_size : self.num_replicas])


def __getattr__(name: str) -> Any:
    """``auto_dataloader`` on first access (see :func:`distengine.distributed.__getattr__`)."""
    if name == "auto_dataloader":
        from distengine.data.loader import auto_dataloader

        return auto_dataloader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "auto_dataloader"})
