"""``auto_dataloader``: a DataLoader over a resumable, sharded sampler with per-sample seeding."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from distengine.data.sampler import ResumableDistributedSampler
from distengine.data.seeded import SeededDataset
from distengine.engine.preemption import ignore_preemption_signals

__all__ = ["auto_dataloader"]


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

    Each rank gets its share of ``batch_size`` samples per batch (``batch_size //
    world_size``; when that does not divide, the first ranks take one more, and
    ``loader.sampler.loss_weight`` corrects their losses' weights) from one global
    permutation per data pass (:class:`~distengine.data.ResumableDistributedSampler`), so
    the global batches and the iterations per epoch do not depend on the world size (an
    elastic job can resume at any world size) and an
    :class:`~distengine.engine.Engine` can resume mid-pass without fetching skipped samples.
    The dataset is wrapped in :class:`~distengine.data.SeededDataset` so random augmentation
    depends only on ``(seed, pass, index)``, and the loader has its own
    ``torch.Generator``, so creating an iterator never draws from the global RNG. Its
    workers ignore SIGTERM and SIGUSR1, so a preemption signal sent to the whole process
    group cannot kill them while the main process writes its checkpoint.

    With ``drop_last=False`` the last partial global batch is padded (by wrapping around);
    ``engine.state.batch_padding`` says how many rows of a batch are padding and metrics
    skip them, so evaluation counts every sample exactly once.

    Args:
        dataset: a map-style dataset.
        batch_size: the global batch size; at least the world size.
        shuffle: a new permutation per data pass (``False``: dataset order, for evaluation).
        num_workers: DataLoader worker processes.
        drop_last: drop the last partial global batch instead of padding it.
        pin_memory: default: ``True`` when CUDA is the device.
        **kwargs: other DataLoader arguments (``collate_fn``, ``persistent_workers`` …).

    Example:
        >>> import torch
        >>> ds = torch.utils.data.TensorDataset(torch.arange(10.0))
        >>> loader = auto_dataloader(ds, batch_size=4, shuffle=False)
        >>> len(loader)
        3
    """
    from distengine import distributed as idist

    if isinstance(dataset, IterableDataset):
        raise TypeError(
            "auto_dataloader needs a map-style dataset (with __getitem__ and __len__) to shard and "
            f"resume it exactly, got the IterableDataset {type(dataset).__name__}"
        )
    for key in ("sampler", "batch_sampler", "generator"):
        if key in kwargs:
            raise ValueError(f"auto_dataloader builds its own {key}; do not pass {key}=")
    world_size, rank = idist.get_world_size(), idist.get_rank()
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"batch_size must be a positive int (the global batch), got {batch_size!r}"
        )
    if batch_size < world_size:
        raise ValueError(
            f"batch_size is the global batch and needs at least one sample per rank: got "
            f"batch_size={batch_size} with world size {world_size}"
        )
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
    if pin_memory is None:
        pin_memory = "cuda" in str(idist.device())
    user_init = kwargs.pop("worker_init_fn", None)
    if num_workers > 0:
        kwargs["worker_init_fn"] = _WorkerInit(user_init)
    generator = torch.Generator()
    generator.manual_seed(0)  # only worker base seeds come from it; samples are seeded per key
    return DataLoader(
        seeded,
        batch_size=sampler.local_batch_size,
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
