"""DiskSaver: where ``Checkpoint`` writes; a local directory or any fsspec URL."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from distengine.checkpoint.catalog import list_checkpoints
from distengine.checkpoint.manifest import MANIFEST_SUFFIX
from distengine.checkpoint.storage import Storage
from distengine.checkpoint.writer import MANIFEST_FIELDS, remove_checkpoint, write_checkpoint

__all__ = ["DiskSaver"]

# Directories whose stale temporary files this process already removed (once per process:
# later temporaries may belong to a write of this process that is still running).
_swept: set[str] = set()
_swept_lock = threading.Lock()


class DiskSaver:
    """Saves checkpoints in a directory: a local path or an fsspec URL.

    Each checkpoint is a payload file (``torch.save``, loadable with
    ``weights_only=True``) and a ``.manifest.json`` written after it with the payload's
    size and SHA-256 (see :mod:`distengine.checkpoint`). On a local disk the files are
    committed with temp file + fsync + rename; on object stores by the store's atomic
    upload.

    Unlike Ignite's ``DiskSaver`` it has no ``save_on_rank``: :class:`Checkpoint` decides
    which rank writes. Called directly, it writes from whichever process calls it.

    Args:
        dirname: a local directory or a URL (``"s3://bucket/run1"``, ``"memory://x"``).
        atomic: on a local disk, write a temporary file and rename it, so a crash never
            leaves a partial file under the final name (object stores are atomic anyway).
        create_dir: create ``dirname`` if it does not exist.
        require_empty: raise if ``dirname`` already holds checkpoint files (``.pt``
            payloads or manifests); other files are ignored. Pass ``False`` to resume
            into an existing directory.
        **storage_options: passed to the fsspec filesystem, e.g. for s3fs ``key``,
            ``secret``, ``client_kwargs={"endpoint_url": ...}``.

    Raises:
        ValueError: the directory is missing (with ``create_dir=False``) or not empty.

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
        **storage_options: Any,
    ):
        if "save_on_rank" in storage_options:
            raise TypeError(
                "DiskSaver takes no save_on_rank (got one): pass save_on_rank to Checkpoint, "
                "which decides the writing rank"
            )
        self.storage = Storage(dirname, **storage_options)
        self.dirname = self.storage.url
        self._atomic = atomic
        self.storage.ensure_dir(create_dir)
        if require_empty:
            matched = sorted(
                n for n in self.storage.list_files() if n.endswith((".pt", MANIFEST_SUFFIX))
            )
            if matched:
                raise ValueError(
                    f"Files {matched} are already present in the directory {self.dirname}. "
                    "If you want to use this directory anyway, pass `require_empty=False`."
                )

    def url_of(self, filename: str) -> str:
        """The path or URL of ``filename`` in this directory."""
        return self.storage.url_of(filename)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        """Writes ``checkpoint`` as ``filename``, then its manifest.

        Args:
            checkpoint: what to save (tensors, dicts, lists, numbers, strings).
            filename: the payload file name.
            metadata: Ignite's metadata (``basename``, ``score_name``, ``priority``) plus
                manifest fields (``iteration``, ``epoch``, ``world_size``,
                ``filename_prefix``, ``holds_engine``); unknown keys are ignored.
        """
        self._sweep_once()
        fields = {k: v for k, v in (metadata or {}).items() if k in MANIFEST_FIELDS}
        write_checkpoint(self.storage, filename, checkpoint, atomic=self._atomic, **fields)

    def remove(self, filename: str) -> None:
        """Deletes the checkpoint ``filename`` (its manifest first, then the payload)."""
        remove_checkpoint(self.storage, filename)

    def saved_items(self, basename: str, score_name: str | None) -> list[tuple[float, str]]:
        """``(priority, filename)`` of the checkpoints of one handler found here, lowest first.

        A checkpoint belongs to the handler that has the same ``basename`` (prefix and
        name) and ``score_name``. Used by :class:`Checkpoint` to rebuild its retention
        list after a restart.
        """
        entries = [
            e.manifest
            for e in list_checkpoints(self.storage)
            if e.manifest.basename == basename and e.manifest.score_name == score_name
        ]
        entries.sort(key=lambda m: (m.priority, m.sequence))
        return [(m.priority, m.payload) for m in entries]

    def _sweep_once(self) -> None:
        with _swept_lock:
            if self.storage.url in _swept:
                return
            _swept.add(self.storage.url)
        self.storage.remove_stale_temporaries()

    def __repr__(self) -> str:
        return f"DiskSaver({self.dirname!r}, atomic={self._atomic})"
