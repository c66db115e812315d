"""``auto_dataloader``: a DataLoader over a resumable, sharded sampler with per-sample seeding.

Ignite users call it as ``idist.auto_dataloader`` (``ignite.distributed.auto_dataloader``):
:mod:`distengine.distributed` re-exports it lazily, the one import from a lower layer to a
higher one that the layer contract allows (docs/internals.md, "Layers").
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from distengine import distributed as idist
from distengine.data.sampler import ResumableDistributedSampler
from distengine.data.seeded import SeededDataset
from distengine.signals import ignore_preemption_signals

__all__ = ["auto_dataloader"]


def workers_per_rank(num_workers: int, nproc_per_node: int) -> int:
    """Returns the DataLoader workers each rank starts for ``num_workers`` per node.

    Ignite's rule, kept so that a ported script starts as many worker processes: the
    per-node count is divided among the node's processes (rounded up) once there are at
    least as many workers as processes; a smaller count is used by every rank as given.

    Example:
        >>> workers_per_rank(8, 2), workers_per_rank(4, 3), workers_per_rank(2, 3)
        (4, 2, 2)
    """
    if num_workers >= nproc_per_node:
        return -(-num_workers // nproc_per_node)
    return num_workers


def auto_dataloader(
    dataset: Any,
    batch_size: int,
    shuffle: bool = True,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool | None = None,
    **kwargs: Any,
) -> DataLoader:
    """A DataLoader for this rank: ``batch_size`` is the **global** batch (Ignite's meaning).

    All ranks together read global batch ``k`` of one permutation per data pass
    (:class:`~distengine.data.ResumableDistributedSampler`): rank ``r`` takes
    ``batch_size // world_size`` samples of it, one more for the first
    ``batch_size % world_size`` ranks. So the global batches do not depend on the world
    size (a run resumes at another world size on the same batches) and an
    :class:`~distengine.engine.Engine` resumes mid-pass without fetching skipped samples.
    The dataset is wrapped in :class:`~distengine.data.SeededDataset` so random augmentation
    depends only on ``(seed, pass, index)``, and the loader has its own ``torch.Generator``,
    so creating an iterator never draws from the global RNG. Its workers ignore SIGTERM and
    SIGUSR1, so a preemption signal sent to the whole process group cannot kill them while
    the main process writes its checkpoint.

    Padding: nothing is padded at world size 1. At world size > 1 a rank left with no sample
    of the last, shorter global batch gets one padding row so that every rank runs the same
    number of iterations; ``engine.state.batch_padding`` marks it and metrics skip it, so
    evaluation counts every sample exactly once, and ``create_supervised_trainer`` gives it a
    zero gradient. When ranks hold unequal shares of a batch, ``create_supervised_trainer``
    weights each rank's loss by ``engine.state.batch_loss_scale``, so the gradient is the one
    of the mean over the global batch; a custom process function must do the same.

    Args:
        dataset: a map-style dataset.
        batch_size: the global batch size (any positive int; see above).
        shuffle: a new permutation per data pass (``False``: dataset order, for evaluation).
        num_workers: DataLoader worker processes **per node**, as in Ignite: each rank starts
            ``ceil(num_workers / processes per node)`` (``num_workers`` itself when it is
            smaller than the processes per node; see :func:`workers_per_rank`).
        drop_last: drop the last partial global batch instead of delivering it.
        pin_memory: default: ``True`` when CUDA is the device.
        **kwargs: other DataLoader arguments (``collate_fn``, ``persistent_workers`` …).

    Example:
        >>> import torch
        >>> ds = torch.utils.data.TensorDataset(torch.arange(10.0))
        >>> loader = auto_dataloader(ds, batch_size=4, shuffle=False)
        >>> [len(b[0]) for b in loader]  # alone: no padding, a shorter last batch
        [4, 4, 2]
    """
    if isinstance(dataset, IterableDataset):
        raise TypeError(
            "auto_dataloader needs a map-style dataset (with __getitem__ and __len__) to shard and "
            f"resume it exactly, got the IterableDataset {type(dataset).__name__}"
        )
    for key in ("sampler", "batch_sampler", "generator"):
        if key in kwargs:
            raise ValueError(f"auto_dataloader builds its own {key}; do not pass {key}=")
    world_size, rank = idist.get_world_size(), idist.get_rank()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"batch_size must be a positive int (the global batch), got {batch_size!r}"
        )
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    seeded = dataset if isinstance(dataset, SeededDataset) else SeededDataset(dataset)
    sampler = ResumableDistributedSampler(
        seeded,
        global_batch_size=batch_size,
        num_replicas=world_size,
        rank=rank,
        shuffle=shuffle,
        drop_last=drop_last,
        keyed=True,
    )
    if shuffle and batch_size % world_size and rank == 0:
        shares = sorted({batch_size // world_size, -(-batch_size // world_size)}, reverse=True)
        warnings.warn(
            f"batch_size={batch_size} is not divisible by the world size {world_size}: ranks take "
            f"{' or '.join(map(str, shares))} samples of each global batch. "
            "create_supervised_trainer weights each rank's loss so that the gradient is the "
            "mean over the global batch; a custom process function must multiply its mean loss "
            "by engine.state.batch_loss_scale",
            stacklevel=2,
        )
    if pin_memory is None:
        pin_memory = "cuda" in str(idist.device())
    nproc_per_node = max(1, world_size // idist.get_nnodes())
    num_workers = workers_per_rank(num_workers, nproc_per_node)
    user_init = kwargs.pop("worker_init_fn", None)
    if num_workers > 0:
        kwargs["worker_init_fn"] = _WorkerInit(user_init)
    generator = torch.Generator()
    generator.manual_seed(0)  # only worker base seeds come from it; samples are seeded per key
    return DataLoader(
        seeded,
        batch_size=sampler.loader_batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=False,
        pin_memory=pin_memory,
        generator=generator,
        **kwargs,
    )


class _WorkerInit:
    """Picklable ``worker_init_fn``: ignore preemption signals, then the user's init."""

    def __init__(self, user_init: Any):
        self.user_init = user_init

    def __call__(self, worker_id: int) -> None:
        ignore_preemption_signals()
        if self.user_init is not None:
            self.user_init(worker_id)
