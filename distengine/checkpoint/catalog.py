"""Reading a checkpoint directory: which checkpoints exist, which are valid, which is newest.

"Exists" means: its manifest parses and its payload is present with the recorded size
(cheap, a listing). "Valid" adds: the payload's SHA-256 matches (reads the payload).
"Newest" is the highest save sequence number, never the file time: clocks of different
nodes disagree and object stores do not keep creation order.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass

from distengine.checkpoint.collective import on_rank0_for_all
from distengine.checkpoint.errors import CheckpointIntegrityError
from distengine.checkpoint.manifest import MANIFEST_SUFFIX, Manifest
from distengine.checkpoint.storage import Storage

__all__ = [
    "CheckpointEntry",
    "find_latest",
    "latest_for_all",
    "list_checkpoints",
    "next_sequence",
    "verify_checkpoint",
]


@dataclass(frozen=True)
class CheckpointEntry:
    """A checkpoint found in a directory: its manifest file name and content."""

    manifest_name: str
    manifest: Manifest


def list_checkpoints(
    storage: Storage, *, problems: list[str] | None = None
) -> list[CheckpointEntry]:
    """Checkpoints whose manifest parses and whose payload has the recorded size.

    Sorted by save sequence number, oldest first. Digests are not checked (see
    :func:`verify_checkpoint`).

    Args:
        storage: the directory.
        problems: if given, receives one line per manifest that was skipped, with why.

    Example:
        >>> [e.manifest.payload for e in list_checkpoints(Storage("memory://empty-dir"))]
        []
    """
    files = storage.list_files()
    entries = []
    for name in sorted(n for n in files if n.endswith(MANIFEST_SUFFIX)):
        try:
            manifest = Manifest.from_json(storage.read(name))
        except (OSError, ValueError) as e:
            _note(problems, f"{storage.url_of(name)}: unreadable manifest: {e}")
            continue
        size = files.get(manifest.payload)
        if size is None:
            _note(problems, f"{storage.url_of(name)}: payload {manifest.payload!r} is missing")
            continue
        if size != manifest.size:
            _note(
                problems,
                f"{storage.url_of(manifest.payload)}: expected {manifest.size} bytes (from its manifest), found {size}",
            )
            continue
        entries.append(CheckpointEntry(name, manifest))
    entries.sort(key=lambda e: (e.manifest.sequence, e.manifest.created_unix))
    return entries


def verify_checkpoint(storage: Storage, manifest: Manifest) -> None:
    """Checks the payload of ``manifest`` against its size and SHA-256 (reads it once).

    Raises:
        CheckpointIntegrityError: naming the file and the mismatch (or that it is missing).
    """
    try:
        storage.verify(manifest.payload, size=manifest.size, sha256=manifest.sha256)
    except FileNotFoundError:
        raise CheckpointIntegrityError(
            f"{storage.url_of(manifest.payload)}: payload is missing"
        ) from None


def find_latest(storage: Storage, filename_prefix: str | None = None) -> str | None:
    """URL of the valid checkpoint that holds an engine with the highest sequence number.

    Partial or corrupt checkpoints are skipped with a warning naming them; the previous
    valid one is returned instead.

    Args:
        storage: the directory.
        filename_prefix: if given, only checkpoints saved with this ``filename_prefix``.

    Example:
        >>> find_latest(Storage("memory://empty-dir")) is None
        True
    """
    problems: list[str] = []
    candidates = [
        e
        for e in list_checkpoints(storage, problems=problems)
        if e.manifest.holds_engine
        and (filename_prefix is None or e.manifest.filename_prefix == filename_prefix)
    ]
    found = None
    for entry in reversed(candidates):
        try:
            verify_checkpoint(storage, entry.manifest)
        except (OSError, CheckpointIntegrityError) as e:
            problems.append(str(e))
            continue
        found = storage.url_of(entry.manifest.payload)
        break
    for p in problems:
        warnings.warn(f"Skipping an invalid checkpoint: {p}", RuntimeWarning, stacklevel=2)
    return found


_sequences: dict[str, int] = {}
_sequence_lock = threading.Lock()


def next_sequence(storage: Storage) -> int:
    """The next save sequence number for this directory, greater than any on storage.

    The first call for a directory in a process reads the manifests there (also those
    whose payload is gone, so a number is never reused); later calls count on in memory,
    shared by every handler of this process that writes to the same directory.

    Example:
        >>> next_sequence(Storage("memory://seq-example"))
        1
    """
    with _sequence_lock:
        last = _sequences.get(storage.url)
        if last is None:
            last = 0
            for name in storage.list_files():
                if not name.endswith(MANIFEST_SUFFIX):
                    continue
                try:
                    last = max(last, Manifest.from_json(storage.read(name)).sequence)
                except (OSError, ValueError):
                    continue
        _sequences[storage.url] = last + 1
        return last + 1


def _note(problems: list[str] | None, line: str) -> None:
    if problems is not None:
        problems.append(line)


def latest_for_all(storage: Storage, filename_prefix: str | None = None) -> str | None:
    """:func:`find_latest` run on rank 0, its answer on every rank (a collective)."""
    return on_rank0_for_all(
        "latest",
        lambda: find_latest(storage, filename_prefix),
        f"listing checkpoints in {storage.url!r}",
    )
