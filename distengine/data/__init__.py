"""Resumable, sharded sampling and per-sample seeding (see docs/internals.md, "Data pass, cursor and padding")."""

from distengine.data.sampler import ResumableDistributedSampler
from distengine.data.seeded import SeededDataset

__all__ = ["ResumableDistributedSampler", "SeededDataset"]
