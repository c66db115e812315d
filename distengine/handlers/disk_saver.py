"""DiskSaver: where ``Checkpoint`` writes; a local directory or any fsspec URL."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from distengine.checkpoint.save_handler import BaseSaveHandler
from distengine.checkpoint.storage import Storage
from distengine.checkpoint.writer import (
    MANIFEST_FIELDS,
    DirectoryWriter,
    SaveRequest,
    WriterSession,
)

__all__ = ["DiskSaver"]

# Keyword arguments that go to torch.save (Ignite's DiskSaver **kwargs); the rest are
# storage options for fsspec.
_TORCH_SAVE_KWARGS = (
    "pickle_module",
    "pickle_protocol",
    "_use_new_zipfile_serialization",
    "_disable_byteorder_record",
)


class DiskSaver(BaseSaveHandler):
    """Saves checkpoints in a directory: a local path or an fsspec URL.

    Each checkpoint is a payload file (``torch.save``, loadable with
    ``weights_only=True``) and a ``.manifest.json`` committed after it, with the
    payload's size and SHA-256, the run and handler that wrote it and a checksum of its
    own (see ``docs/checkpoints.md``). Files are committed with temporary file + fsync +
    rename on a local disk, by the store's atomic upload on object stores, and a file
    that a committed manifest lists is never overwritten: a crash in any save leaves the
    previous checkpoint intact. Every storage call is bounded by ``io_timeout``.

    Unlike Ignite's ``DiskSaver`` it has no ``save_on_rank``: :class:`Checkpoint` decides
    which rank writes. Called directly, it writes from whichever process calls it.

    Args:
        dirname: a local directory (``str`` or ``Path``) or a URL (``"s3://bucket/run1"``,
            ``"memory://x"``).
        atomic: on a local disk, write a temporary file and rename it, so a crash never
            leaves a partial file under the final name (object stores are atomic anyway).
        create_dir: create ``dirname`` if it does not exist.
        require_empty: raise if ``dirname`` already holds ``.pt`` files (as Ignite);
            other files are ignored. Pass ``False`` to resume into an existing directory.
        io_timeout: seconds after which a stalled storage call fails with
            ``CheckpointTimeoutError`` (default ``DISTENGINE_STORAGE_TIMEOUT`` or 120);
            payload transfers fail after that long without progress.
        **kwargs: ``torch.save`` options (``pickle_protocol``,
            ``_use_new_zipfile_serialization`` …) and fsspec storage options, e.g. for
            s3fs ``key``, ``secret``, ``client_kwargs={"endpoint_url": ...}``.

    Attributes:
        dirname: the directory: a ``Path`` for a local directory (as in Ignite), the URL
            (``str``) otherwise.

    Raises:
        ValueError: the directory is missing (with ``create_dir=False``), is a file, or
            is not empty (with ``require_empty=True``).

    Example:
        >>> saver = DiskSaver("memory://disk-saver-doc", require_empty=False)
        >>> saver({"w": [1, 2]}, "checkpoint_1.pt")
        >>> saver.url_of("checkpoint_1.pt")
        'memory://disk-saver-doc/checkpoint_1.pt'
    """

    def __init__(
        self,
        dirname: str | os.PathLike,
        atomic: bool = True,
        create_dir: bool = True,
        require_empty: bool = True,
        *,
        io_timeout: float | None = None,
        **kwargs: Any,
    ):
        if "save_on_rank" in kwargs:
            raise TypeError(
                "DiskSaver takes no save_on_rank (got one): pass save_on_rank to Checkpoint, "
                "which decides the writing rank"
            )
        save_kwargs = {k: kwargs.pop(k) for k in _TORCH_SAVE_KWARGS if k in kwargs}
        self.storage = Storage(dirname, io_timeout=io_timeout, **kwargs)
        self.dirname: str | Path = (
            Path(self.storage.root) if self.storage.is_local else self.storage.url
        )
        self._atomic = atomic
        self.storage.ensure_dir(create_dir)
        if require_empty:
            matched = sorted(n for n in self.storage.list_files() if n.endswith(".pt"))
            if matched:
                raise ValueError(
                    f"Files {matched} with extension '.pt' are already present in the directory "
                    f"{self.dirname}. If you want to use this directory anyway, pass "
                    "`require_empty=False`."
                )
        self.checkpoint_writer = DirectoryWriter(
            self.storage, atomic=atomic, save_kwargs=save_kwargs
        )
        self._session = WriterSession.anonymous()

    def url_of(self, filename: str) -> str | Path:
        """Returns the path (``Path``, local) or URL (``str``) of ``filename`` in this directory."""
        if self.storage.is_local:
            return Path(self.storage.path(filename))
        return self.storage.url_of(filename)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        """Writes ``checkpoint`` as ``filename``, then its manifest.

        A direct call writes outside any run: the checkpoint belongs to this saver only
        (``Checkpoint`` writes through :attr:`checkpoint_writer` with its run identity).

        Args:
            checkpoint: what to save (tensors, dicts, lists, numbers, strings).
            filename: the payload file name.
            metadata: Ignite's metadata (``basename``, ``score_name``, ``priority``);
                manifest fields (``iteration``, ``epoch`` …) are taken too; other keys
                are ignored.
        """
        fields = {k: v for k, v in (metadata or {}).items() if k in MANIFEST_FIELDS}
        result = self.checkpoint_writer.save(
            self._session, SaveRequest(filename, checkpoint, fields)
        )
        for message in result.warnings:
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    def remove(self, filename: str) -> None:
        """Deletes the checkpoint this saver wrote as ``filename`` (else the checkpoint
        whose payload file is ``filename``): its manifest first, then its files."""
        self.checkpoint_writer.remove(self._session, filename)

    def __repr__(self) -> str:
        return f"DiskSaver({str(self.dirname)!r}, atomic={self._atomic})"
