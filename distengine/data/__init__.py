"""Resumable, sharded sampling and per-sample seeding (docs/contracts.md, contracts 2 and 3)."""

from distengine.data.loader import auto_dataloader
from distengine.data.sampler import ResumableDistributedSampler
from distengine.data.seeded import SeededDataset

__all__ = ["ResumableDistributedSampler", "SeededDataset", "auto_dataloader"]
