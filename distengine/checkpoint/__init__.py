"""Checkpoint storage and the save protocol: atomic, verified, listable, through fsspec.

Layout of one checkpoint in a directory (local path or any fsspec URL)::

    {name}                 payload: torch.save of tensors, dicts, lists, numbers, strings
                           (loads with torch.load(weights_only=True)); e.g. checkpoint_100.pt
    {name}.manifest.json   committed after the payload is durable: sizes and SHA-256 of
                           the files, sequence number, iteration, run and handler
                           identity, a checksum of its own (see manifest.py)

A checkpoint exists only once its manifest does, and no save changes a file that a
committed manifest lists before a newer checkpoint is committed: a crash at any point of
a save leaves the previous checkpoint valid and returned by ``latest``.
``docs/checkpoints.md`` describes the protocol, the manifest and why it is crash-safe.

Modules: ``storage`` (one directory, bounded calls), ``manifest``, ``catalog`` (listing,
checks, ``find_latest``), ``writer`` (one save into a directory), ``ledger`` (other live
writers), ``identity`` (run, handler, session), ``config``/``plan``/``policy`` (what a
handler saves and keeps), ``protocol`` (the collective save), ``loading``, ``state``,
``faults`` (``DISTENGINE_FAULT_INJECT``). The handler users attach is
:class:`distengine.handlers.Checkpoint`.
"""

from distengine.checkpoint.catalog import (
    CheckpointEntry,
    find_latest,
    list_checkpoints,
    load_manifest,
    scan,
    verify_checkpoint,
)
from distengine.checkpoint.config import CheckpointConfig
from distengine.checkpoint.content import check_weights_only, snapshot, strip_prefixes, unwrap_model
from distengine.checkpoint.coordination import CheckpointCollectiveError, handshake
from distengine.checkpoint.deadline import IO_TIMEOUT_ENV
from distengine.checkpoint.errors import (
    CheckpointConflictError,
    CheckpointError,
    CheckpointIntegrityError,
    CheckpointSaveError,
    CheckpointTimeoutError,
)
from distengine.checkpoint.faults import FAULT_INJECT_ENV, PHASES, fault_point
from distengine.checkpoint.identity import Identity
from distengine.checkpoint.loading import load_objects, read_payload
from distengine.checkpoint.manifest import (
    FORMAT_VERSION,
    MAX_MANIFEST_BYTES,
    FileEntry,
    Manifest,
    manifest_name,
)
from distengine.checkpoint.protocol import CollectiveSave
from distengine.checkpoint.save_handler import BaseSaveHandler
from distengine.checkpoint.storage import FileInfo, FileStat, Storage
from distengine.checkpoint.writer import (
    DirectoryWriter,
    SaveRequest,
    WriterSession,
    remove_checkpoint,
    write_checkpoint,
)

__all__ = [
    "FAULT_INJECT_ENV",
    "FORMAT_VERSION",
    "IO_TIMEOUT_ENV",
    "MAX_MANIFEST_BYTES",
    "PHASES",
    "BaseSaveHandler",
    "CheckpointCollectiveError",
    "CheckpointConfig",
    "CheckpointConflictError",
    "CheckpointEntry",
    "CheckpointError",
    "CheckpointIntegrityError",
    "CheckpointSaveError",
    "CheckpointTimeoutError",
    "CollectiveSave",
    "DirectoryWriter",
    "FileEntry",
    "FileInfo",
    "FileStat",
    "Identity",
    "Manifest",
    "SaveRequest",
    "Storage",
    "WriterSession",
    "check_weights_only",
    "fault_point",
    "find_latest",
    "handshake",
    "list_checkpoints",
    "load_manifest",
    "load_objects",
    "manifest_name",
    "read_payload",
    "remove_checkpoint",
    "scan",
    "snapshot",
    "strip_prefixes",
    "unwrap_model",
    "verify_checkpoint",
    "write_checkpoint",
]
