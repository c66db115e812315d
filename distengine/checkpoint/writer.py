"""Writing one checkpoint: payload, then manifest; removing one: manifest, then payload.

The order is what makes crashes harmless. A reader trusts a payload only through its
manifest, so:

- a crash before the manifest is committed leaves an orphan payload that nothing uses;
- removal deletes the manifest first, so a crash in the middle never leaves a manifest
  pointing at a deleted payload (and if it did, readers would skip it).
"""

from __future__ import annotations

from typing import Any

import torch

from distengine.checkpoint.catalog import next_sequence
from distengine.checkpoint.faults import fault_point
from distengine.checkpoint.manifest import Manifest, manifest_name
from distengine.checkpoint.state import check_weights_only
from distengine.checkpoint.storage import Storage

__all__ = ["MANIFEST_FIELDS", "remove_checkpoint", "write_checkpoint"]

# Fields a caller may give for the manifest; the rest (size, digest, sequence) is ours.
MANIFEST_FIELDS = (
    "iteration",
    "epoch",
    "world_size",
    "filename_prefix",
    "holds_engine",
    "basename",
    "score_name",
    "priority",
)


def write_checkpoint(
    storage: Storage, filename: str, payload: Any, *, atomic: bool = True, **fields: Any
) -> Manifest:
    """Saves ``payload`` as ``filename`` in ``storage``, then its manifest.

    Args:
        storage: the directory.
        filename: payload file name (``"checkpoint_100.pt"``).
        payload: what to ``torch.save``; must load with ``weights_only=True``.
        atomic: local disk: temporary file + fsync + rename (see :class:`Storage`).
        **fields: manifest fields from :data:`MANIFEST_FIELDS`; missing ones get
            neutral values (no iteration, world size 1, not holding an engine).

    Returns:
        the manifest that was written.

    Raises:
        TypeError: ``payload`` holds a value ``torch.load(weights_only=True)`` refuses.
        OSError: the storage failed; earlier checkpoints are untouched.

    Example:
        >>> st = Storage("memory://writer-example")
        >>> write_checkpoint(st, "c_1.pt", {"w": torch.ones(1)}, iteration=1).payload
        'c_1.pt'
    """
    unknown = set(fields) - set(MANIFEST_FIELDS)
    if unknown:
        raise TypeError(
            f"Unknown manifest fields {sorted(unknown)}; expected some of {MANIFEST_FIELDS}"
        )
    if filename.endswith(manifest_name("")) or filename != filename.strip() or "/" in filename:
        raise ValueError(
            f"Expected a plain payload file name such as 'checkpoint_1.pt', got {filename!r}"
        )
    check_weights_only(payload)
    info = storage.write(filename, lambda f: torch.save(payload, f), atomic=atomic)
    fault_point("before_manifest")
    stem = filename.rsplit(".", 1)[0]
    manifest = Manifest(
        payload=filename,
        size=info.size,
        sha256=info.sha256,
        sequence=next_sequence(storage),
        iteration=fields.get("iteration"),
        epoch=fields.get("epoch"),
        world_size=int(fields.get("world_size", 1)),
        filename_prefix=str(fields.get("filename_prefix", "")),
        holds_engine=bool(fields.get("holds_engine", False)),
        basename=str(fields.get("basename", stem)),
        score_name=fields.get("score_name"),
        priority=fields.get("priority", 0),
    )
    storage.write_bytes(manifest_name(filename), manifest.to_json(), atomic=atomic)
    fault_point("before_cleanup")
    return manifest


def remove_checkpoint(storage: Storage, filename: str) -> None:
    """Deletes the checkpoint whose payload is ``filename`` (manifest first).

    Example:
        >>> remove_checkpoint(Storage("memory://writer-example"), "c_1.pt")
    """
    storage.remove(manifest_name(filename))
    storage.remove(filename)
