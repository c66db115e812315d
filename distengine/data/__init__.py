"""Resumable, sharded sampling and per-sample seeding (docs/contracts.md, contracts 2 and 3)."""

from distengine.data.loader import auto_dataloader
from distengine.data.resumable import ResumableSampler, check_resumable_sampler
from distengine.data.sampler import ResumableDistributedSampler
from distengine.data.seeded import SeededDataset

__all__ = [
    "ResumableDistributedSampler",
    "ResumableSampler",
    "SeededDataset",
    "auto_dataloader",
    "check_resumable_sampler",
]
