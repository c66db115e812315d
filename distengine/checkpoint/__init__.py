"""Checkpoint storage: atomic, verified, listable, through fsspec (DESIGN.md contract 6).

Layout of one checkpoint in a directory (local path or any fsspec URL)::

    {stem}.pt              payload: torch.save of tensors, dicts, lists, numbers, strings
                           (loads with torch.load(weights_only=True))
    {stem}.manifest.json   written after the payload is committed: format version, save
                           sequence number, iteration, epoch, world size, filename prefix,
                           whether it holds an engine, the payload's size and SHA-256

A checkpoint exists only once its manifest does. ``find_latest`` returns the verified
checkpoint with the highest sequence number; partial or corrupt ones are skipped.

The handler users attach is :class:`distengine.handlers.Checkpoint`; this package is
the storage and protocol layer under it. Fault injection for crash tests is documented
in :mod:`distengine.checkpoint.faults` (``DISTENGINE_FAULT_INJECT``).
"""

from distengine.checkpoint.catalog import (
    CheckpointEntry,
    find_latest,
    list_checkpoints,
    next_sequence,
    verify_checkpoint,
)
from distengine.checkpoint.collective import CheckpointCollectiveError, handshake
from distengine.checkpoint.errors import (
    CheckpointError,
    CheckpointIntegrityError,
    CheckpointSaveError,
)
from distengine.checkpoint.faults import FAULT_INJECT_ENV, PHASES, fault_point
from distengine.checkpoint.loading import load_objects, read_payload
from distengine.checkpoint.manifest import FORMAT_VERSION, Manifest, manifest_name
from distengine.checkpoint.state import check_weights_only, snapshot, strip_prefixes, unwrap_model
from distengine.checkpoint.storage import FileInfo, Storage
from distengine.checkpoint.writer import remove_checkpoint, write_checkpoint

__all__ = [
    "FAULT_INJECT_ENV",
    "FORMAT_VERSION",
    "PHASES",
    "CheckpointCollectiveError",
    "CheckpointEntry",
    "CheckpointError",
    "CheckpointIntegrityError",
    "CheckpointSaveError",
    "FileInfo",
    "Manifest",
    "Storage",
    "check_weights_only",
    "fault_point",
    "find_latest",
    "handshake",
    "list_checkpoints",
    "load_objects",
    "manifest_name",
    "next_sequence",
    "read_payload",
    "remove_checkpoint",
    "snapshot",
    "strip_prefixes",
    "unwrap_model",
    "verify_checkpoint",
    "write_checkpoint",
]
