"""Reading a checkpoint directory: which checkpoints exist, which are valid, which is newest.

"Exists" means: its manifest is intact (checksum, field types, bound to its payload's
name) and every file it lists is present with the recorded size (cheap: a listing and
one small read per manifest). "Valid" adds: every file's SHA-256 matches (reads them).
:func:`find_latest` and :func:`~distengine.checkpoint.loading.read_payload` apply the same
checks, through :func:`load_manifest`, so ``latest`` never returns a checkpoint that
``load_objects`` would refuse. "Newest" is the highest save sequence number, never the
file time: clocks of different nodes disagree and object stores do not keep creation order.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from distengine.checkpoint.coordination import on_rank0_for_all
from distengine.checkpoint.errors import CheckpointIntegrityError
from distengine.checkpoint.manifest import MANIFEST_SUFFIX, MAX_MANIFEST_BYTES, Manifest
from distengine.checkpoint.storage import FileStat, FileTooLargeError, Storage

__all__ = [
    "CheckpointEntry",
    "Scan",
    "find_latest",
    "latest_for_all",
    "list_checkpoints",
    "load_manifest",
    "scan",
    "verify_checkpoint",
]


@dataclass(frozen=True)
class CheckpointEntry:
    """A checkpoint found in a directory: its manifest file name and content."""

    manifest_name: str
    manifest: Manifest


@dataclass
class Scan:
    """One listing of a directory, with every manifest in it read and checked.

    Attributes:
        files: ``{name: FileStat}`` of every file in the directory.
        entries: the checkpoints that exist, oldest first (by sequence number).
        problems: one line per manifest that was skipped, naming it and saying why.
    """

    files: dict[str, FileStat]
    entries: list[CheckpointEntry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    max_sequence: int = 0  # highest sequence number of any intact manifest (0 if none)

    def referenced(self) -> set[str]:
        """Names of the files that some existing checkpoint lists."""
        return {n for e in self.entries for n in e.manifest.files}


def load_manifest(storage: Storage, manifest_file: str, size: int | None = None) -> Manifest:
    """Reads and checks one manifest (size cap, checksum, fields, bound to its payload).

    Raises:
        ValueError: the manifest is too large, damaged or not bound to its payload; the
            message starts with the manifest's path or URL.
        OSError: it cannot be read.
    """
    where = storage.url_of(manifest_file)
    if size is not None and size > MAX_MANIFEST_BYTES:
        raise ValueError(f"{where}: {size} bytes, larger than the {MAX_MANIFEST_BYTES} allowed")
    try:
        data = storage.read(manifest_file, limit=MAX_MANIFEST_BYTES)
        return Manifest.from_json(data, file_name=manifest_file)
    except FileTooLargeError as e:
        raise ValueError(str(e)) from None
    except ValueError as e:
        raise ValueError(f"{where}: invalid manifest: {e}") from None


def scan(storage: Storage, cache: dict | None = None) -> Scan:
    """Lists ``storage`` and reads every manifest in it.

    Args:
        storage: the directory.
        cache: optional ``{(manifest name, FileStat): Manifest | str}`` kept by the caller
            between scans, so that unchanged manifests are not read again.

    Example:
        >>> scan(Storage("memory://empty-dir")).entries
        []
    """
    files = storage.list_files()
    out = Scan(files)
    seen_keys = set()
    for name in sorted(n for n in files if n.endswith(MANIFEST_SUFFIX)):
        stat = files[name]
        key = (name, stat)
        seen_keys.add(key)
        cached = cache.get(key) if cache is not None and stat.version is not None else None
        if cached is None:
            try:
                cached = load_manifest(storage, name, stat.size)
            except FileNotFoundError:
                continue  # removed since the listing
            except (OSError, ValueError) as e:
                cached = str(e) if isinstance(e, ValueError) else f"{storage.url_of(name)}: {e}"
            if cache is not None and stat.version is not None:
                cache[key] = cached
        if isinstance(cached, str):
            out.problems.append(cached)
            continue
        out.max_sequence = max(out.max_sequence, cached.sequence)
        missing = _missing_files(storage, name, cached, files)
        if missing:
            out.problems.append(missing)
            continue
        out.entries.append(CheckpointEntry(name, cached))
    if cache is not None:
        for key in [k for k in cache if k not in seen_keys]:
            del cache[key]
    out.entries.sort(key=_order)
    return out


def _order(e: CheckpointEntry) -> tuple:
    m = e.manifest
    # Same sequence: one checkpoint under two payload names (mid-promotion); prefer the
    # one stored under its own name.
    return (m.sequence, m.payload == m.name, m.created_unix, e.manifest_name)


def _missing_files(
    storage: Storage, manifest_file: str, m: Manifest, files: dict[str, FileStat]
) -> str | None:
    for name, entry in m.files.items():
        stat = files.get(name)
        if stat is None:
            return f"{storage.url_of(name)}: listed in {manifest_file} but missing"
        if stat.size != entry.size:
            return (
                f"{storage.url_of(name)}: expected {entry.size} bytes (from its manifest), "
                f"found {stat.size}"
            )
    return None


def list_checkpoints(
    storage: Storage, *, problems: list[str] | None = None
) -> list[CheckpointEntry]:
    """The checkpoints that exist in ``storage``, oldest first (digests not checked).

    Args:
        storage: the directory.
        problems: if given, receives one line per manifest that was skipped, with why.

    Example:
        >>> list_checkpoints(Storage("memory://empty-dir"))
        []
    """
    s = scan(storage)
    if problems is not None:
        problems.extend(s.problems)
    return s.entries


def verify_checkpoint(storage: Storage, manifest: Manifest) -> None:
    """Checks every file of ``manifest`` against its size and SHA-256 (reads them once).

    Raises:
        CheckpointIntegrityError: naming the file and the mismatch (or that it is missing).
    """
    for name, entry in manifest.files.items():
        try:
            storage.verify(name, size=entry.size, sha256=entry.sha256)
        except FileNotFoundError:
            raise CheckpointIntegrityError(f"{storage.url_of(name)}: missing") from None


def find_latest(storage: Storage, filename_prefix: str | None = None) -> str | None:
    """URL of the valid checkpoint that holds an engine with the highest sequence number.

    Partial or corrupt checkpoints are skipped with a warning naming them; the previous
    valid one is returned instead. Checkpoints of every run in the directory compete: the
    newest saved wins. A directory whose checkpoints hold no engine gives ``None`` with a
    warning saying so.

    Args:
        storage: the directory.
        filename_prefix: if given, only checkpoints saved with this ``filename_prefix``.

    Example:
        >>> find_latest(Storage("memory://empty-dir")) is None
        True
    """
    s = scan(storage)
    problems = list(s.problems)
    matching = [
        e
        for e in s.entries
        if filename_prefix is None or e.manifest.filename_prefix == filename_prefix
    ]
    candidates = [e for e in matching if e.manifest.holds_engine]
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
    if found is None and matching and not candidates:
        where = storage.url + (
            f" with filename_prefix {filename_prefix!r}" if filename_prefix else ""
        )
        warnings.warn(
            f"{where} holds {len(matching)} checkpoint(s), but none holds an Engine, so none "
            "can resume a run: put the trainer in to_save to make resumable checkpoints",
            RuntimeWarning,
            stacklevel=2,
        )
    return found


def latest_for_all(storage: Storage, filename_prefix: str | None = None) -> str | None:
    """:func:`find_latest` run on rank 0 (which warns), its answer on every rank (a collective)."""
    return on_rank0_for_all(
        "latest",
        lambda: find_latest(storage, filename_prefix),
        f"listing checkpoints in {storage.url!r}",
    )
