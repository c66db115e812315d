"""One checkpoint directory on any fsspec filesystem: atomic writes, verified reads, listing.

A file written here is either absent or complete at its final name:

- local disk: written to a temporary file in the same directory, flushed, ``fsync``-ed,
  renamed over the final name with ``os.replace`` and the directory ``fsync``-ed, so a
  crash never leaves a half-written file under the final name and a power cut never
  loses a file whose manifest survived;
- object stores (``s3://``, ``gs://``, ``az://`` …): one PUT for objects below the
  filesystem's block size, a multipart upload completed in one request above it. Either
  way the object appears whole or not at all; an upload that fails is aborted, never
  completed with partial data;
- other fsspec filesystems (``memory://``, ``sftp://`` …): written under a temporary
  name and renamed, as on a local disk (some publish a file as soon as it is opened).

Paths stay ``str``: ``pathlib.Path`` would mangle ``s3://bucket/key``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from distengine.checkpoint.errors import CheckpointIntegrityError
from distengine.checkpoint.faults import fault_point
from distengine.checkpoint.hashing import HashingWriter, hash_stream

__all__ = ["FileInfo", "Storage"]

_OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"}
_TMP_RE = re.compile(r"^\..+\.tmp-[0-9a-f]{12}$")
_WRITE_BUFFER = 1 << 20
_READ_SLICE = 16 << 20


@dataclass(frozen=True)
class FileInfo:
    """Size and SHA-256 of a file as it was written."""

    size: int
    sha256: str


class Storage:
    """A directory given as a local path or an fsspec URL, plus its storage options.

    Args:
        url: a local path (``"/ckpt"``, ``"~/ckpt"``) or a URL (``"s3://bucket/run1"``,
            ``"memory://run1"``).
        **storage_options: passed to the fsspec filesystem (e.g. ``key``, ``secret``,
            ``client_kwargs={"endpoint_url": ...}`` for s3fs).

    Example:
        >>> st = Storage("memory://doc-example")
        >>> st.write_bytes("a.bin", b"abc").size
        3
        >>> st.verify("a.bin", size=3, sha256=st.sha256_of(b"abc"))
        >>> st.read("a.bin")
        b'abc'
    """

    def __init__(self, url: str, **storage_options: Any):
        if not isinstance(url, (str, os.PathLike)):
            raise TypeError(f"Expected a directory path or URL (str), got {type(url).__name__}")
        url = os.fspath(url)
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        if protocol == "file":
            url = os.path.abspath(os.path.expanduser(url.removeprefix("file://")))
        # fsspec reuses filesystem instances per process (a forked rank gets its own);
        # what must not be reused is a cached directory listing, see list_files().
        self.fs, self.root = fsspec.core.url_to_fs(url, **storage_options)
        self.root = self.root.rstrip("/") or self.root
        self.protocol = protocol
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.url = url.rstrip("/") if protocol != "file" else self.root
        self.storage_options = storage_options

    # --- names ---------------------------------------------------------------------------
    def path(self, name: str) -> str:
        """Filesystem path of ``name`` in this directory (no protocol)."""
        return f"{self.root}/{name}" if not self.is_local else os.path.join(self.root, name)

    def url_of(self, name: str) -> str:
        """What users see and pass back: a local path, or the URL with its protocol."""
        return self.path(name) if self.is_local else f"{self.url}/{name}"

    @staticmethod
    def sha256_of(data: bytes) -> str:
        """Hex SHA-256 of ``data``."""
        return hashlib.sha256(data).hexdigest()

    # --- directory -----------------------------------------------------------------------
    def ensure_dir(self, create: bool) -> None:
        """Creates the directory if asked, then checks that it can hold files.

        Raises:
            ValueError: if the directory (or, on an object store, its bucket) is missing.
        """
        if self.is_local:
            if create:
                os.makedirs(self.root, exist_ok=True)
            if not os.path.isdir(self.root):
                raise ValueError(f"Directory path '{self.root}' is not found (create_dir=False)")
            return
        if create and self.protocol not in _OBJECT_STORES:
            self.fs.makedirs(self.root, exist_ok=True)
        # Object stores have no directories: a prefix "exists" once its bucket does.
        bucket = self.root.split("/", 1)[0]
        if not (self.fs.exists(self.root) or self.fs.exists(bucket)):
            raise ValueError(
                f"Directory '{self.url}' is not found: its bucket '{bucket}' does not exist"
            )

    def list_files(self) -> dict[str, int]:
        """``{name: size}`` of the files directly in the directory (fresh listing, no cache)."""
        if self.is_local:
            try:
                with os.scandir(self.root) as it:
                    return {e.name: e.stat().st_size for e in it if e.is_file()}
            except FileNotFoundError:
                return {}
        self.fs.invalidate_cache(self.root)
        try:
            entries = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return {}
        return {
            e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0)
            for e in entries
            if e.get("type") == "file"
        }

    def remove(self, name: str) -> None:
        """Deletes ``name``; a file that is already gone is not an error."""
        try:
            if self.is_local:
                os.remove(self.path(name))
            else:
                self.fs.rm_file(self.path(name))
        except FileNotFoundError:
            pass

    def remove_stale_temporaries(self) -> list[str]:
        """Deletes temporary files left by writers that were killed (not on object stores)."""
        if self.protocol in _OBJECT_STORES:
            return []
        stale = [n for n in self.list_files() if _TMP_RE.match(n)]
        for name in stale:
            self.remove(name)
        return stale

    # --- writing -------------------------------------------------------------------------
    def write(
        self,
        name: str,
        produce: Callable[[BinaryIO], None],
        *,
        atomic: bool = True,
        partial_phase: str = "payload_partial",
        commit_phase: str | None = "before_commit",
    ) -> FileInfo:
        """Writes ``name`` with ``produce(file)``, hashing the bytes as they go.

        Args:
            name: file name in the directory.
            produce: writes the content, e.g. ``lambda f: torch.save(obj, f)``.
            atomic: local disk only: write a temporary file and rename it (object stores
                and transactional filesystems are atomic anyway).
            partial_phase: fault point fired once part of the content is written.
            commit_phase: fault point fired when the content is complete, before commit.

        Returns:
            the :class:`FileInfo` of what was written.
        """
        if self.is_local:
            return self._write_local(name, produce, atomic, partial_phase, commit_phase)
        return self._write_remote(name, produce, atomic, partial_phase, commit_phase)

    def write_bytes(
        self,
        name: str,
        data: bytes,
        *,
        atomic: bool = True,
        partial_phase: str = "manifest_partial",
    ) -> FileInfo:
        """Writes ``data`` as ``name`` (in two halves, so the partial fault point can fire)."""
        half = len(data) // 2

        def produce(f: BinaryIO) -> None:
            f.write(data[:half])
            f.write(data[half:])

        return self.write(
            name, produce, atomic=atomic, partial_phase=partial_phase, commit_phase=None
        )

    def _write_local(
        self,
        name: str,
        produce: Callable[[BinaryIO], None],
        atomic: bool,
        partial_phase: str,
        commit_phase: str | None,
    ) -> FileInfo:
        final = self.path(name)
        target = self.path(_tmp_name(name)) if atomic else final
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_EXCL if atomic else 0)
        fd = os.open(target, flags, 0o666)
        try:
            with open(fd, "wb", buffering=_WRITE_BUFFER) as raw:
                writer = _produce(raw, produce, partial_phase)
                raw.flush()
                os.fsync(raw.fileno())
            if commit_phase is not None:
                fault_point(commit_phase)
            if atomic:
                os.replace(target, final)
            _fsync_dir(self.root)
        except BaseException:
            if atomic:
                _silent_remove(target)
            raise
        return FileInfo(writer.size, writer.hexdigest())

    def _write_remote(
        self,
        name: str,
        produce: Callable[[BinaryIO], None],
        atomic: bool,
        partial_phase: str,
        commit_phase: str | None,
    ) -> FileInfo:
        final = self.path(name)
        if self.protocol in _OBJECT_STORES:
            # The store publishes the object whole when the upload completes, or never.
            f = self.fs.open(final, "wb")
            try:
                writer = _produce(f, produce, partial_phase)
                if commit_phase is not None:
                    fault_point(commit_phase)
                f.close()
            except BaseException:
                _discard(f)
                raise
            return FileInfo(writer.size, writer.hexdigest())
        # Other filesystems may publish a file as soon as it is opened: write a temporary
        # name and rename it, as on a local disk.
        target = self.path(_tmp_name(name)) if atomic else final
        try:
            with self.fs.open(target, "wb") as f:
                writer = _produce(f, produce, partial_phase)
            if commit_phase is not None:
                fault_point(commit_phase)
            if atomic:
                self.fs.mv(target, final)
        except BaseException:
            if atomic:
                try:
                    self.fs.rm_file(target)
                except OSError:
                    pass
            raise
        return FileInfo(writer.size, writer.hexdigest())

    # --- reading -------------------------------------------------------------------------
    def read(self, name: str) -> bytes:
        """The whole content of ``name`` (for small files such as manifests)."""
        if self.is_local:
            with open(self.path(name), "rb") as f:
                return f.read()
        return self.fs.cat_file(self.path(name))

    def open_read(self, name: str) -> BinaryIO:
        """A readable, seekable file object for ``name`` (the caller closes it)."""
        if self.is_local:
            return open(self.path(name), "rb")
        return io.BytesIO(self.fs.cat_file(self.path(name)))

    def verify(self, name: str, *, size: int, sha256: str) -> None:
        """Checks ``name`` against the expected size and digest, reading it once in slices.

        Raises:
            CheckpointIntegrityError: naming the file and what does not match.
            FileNotFoundError: if it does not exist.
        """
        with self.open_verified(name, size=size, sha256=sha256):
            pass

    def open_verified(self, name: str, *, size: int, sha256: str) -> BinaryIO:
        """Opens ``name`` after checking its size and SHA-256; returns it at position 0.

        The check and the later read go through the same open file, so what is loaded
        is what was verified, even if the name is replaced meanwhile.

        Raises:
            CheckpointIntegrityError: naming the file and what does not match.
        """
        f = self.open_read(name)
        try:
            f.seek(0, io.SEEK_END)
            found = f.tell()
            if found != size:
                raise CheckpointIntegrityError(
                    f"{self.url_of(name)}: expected {size} bytes (from its manifest), found {found}"
                )
            f.seek(0)
            _, digest = hash_stream(f, buffer_size=min(max(size, 1), _READ_SLICE))
            if digest != sha256:
                raise CheckpointIntegrityError(
                    f"{self.url_of(name)}: SHA-256 mismatch: manifest says {sha256}, content is {digest}"
                )
            f.seek(0)
        except BaseException:
            f.close()
            raise
        return f


def _tmp_name(name: str) -> str:
    return f".{name}.tmp-{uuid.uuid4().hex[:12]}"


def _produce(raw: Any, produce: Callable[[BinaryIO], None], partial_phase: str) -> HashingWriter:
    """Runs ``produce`` into a hashing writer; returns the writer (size, digest)."""
    writer = HashingWriter(raw, on_write=_partial_hook(raw, partial_phase))
    with writer:
        try:
            produce(writer)  # type: ignore[arg-type]
        except Exception as e:
            # torch.save reports a failed write as "unexpected pos ..." from its zip
            # writer; the storage's own error (disk full, connection reset) is the cause.
            if writer.error is not None and writer.error is not e:
                raise writer.error from e
            raise
    return writer


def _partial_hook(raw: Any, phase: str) -> Callable[[int], None]:
    """Fires ``phase`` just before the second write, with the first one flushed out."""

    def hook(written: int) -> None:
        if written > 0 and not hook.fired:  # type: ignore[attr-defined]
            hook.fired = True  # type: ignore[attr-defined]
            raw.flush()
            fault_point(phase)

    hook.fired = False  # type: ignore[attr-defined]
    return hook


def _fsync_dir(path: str) -> None:
    # Makes the rename durable; some filesystems refuse to open directories (ignore them).
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _silent_remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _discard(f: Any) -> None:
    """Aborts an unfinished remote write without committing any of it."""
    discard = getattr(f, "discard", None)
    try:
        if callable(discard):
            discard()
    finally:
        # fsspec closes files on garbage collection, which would commit what was written.
        try:
            f.closed = True
        except AttributeError:
            pass
