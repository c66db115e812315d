"""One checkpoint directory on any fsspec filesystem: atomic writes, verified reads, listing.

A file written here is either absent or complete at its final name:

- local disk: written to a temporary file in the same directory, flushed, ``fsync``-ed,
  renamed to the final name with ``os.replace`` and the directory ``fsync``-ed, so a
  crash never leaves a half-written file under the final name and a power cut never
  loses a file whose manifest survived;
- object stores (``s3://``, ``gs://``, ``az://`` …): one PUT for objects below the
  filesystem's block size, a multipart upload completed in one request above it. Either
  way the object appears whole or not at all; an upload that fails is aborted, never
  completed with partial data;
- other fsspec filesystems (``memory://``, ``sftp://`` …): written under a temporary
  name and renamed, as on a local disk (some publish a file as soon as it is opened).

Every call is bounded in time (:mod:`distengine.checkpoint.deadline`): small calls by the
I/O timeout, payload transfers by progress (no byte moved for the I/O timeout). Errors
name the file they are about.

Paths stay ``str`` inside: ``pathlib.Path`` would mangle ``s3://bucket/key``.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, NamedTuple

import fsspec
from fsspec.implementations.local import LocalFileSystem

from distengine.checkpoint.deadline import Progress, call_bounded, call_with_progress
from distengine.checkpoint.deadline import io_timeout as resolve_io_timeout
from distengine.checkpoint.errors import CheckpointIntegrityError
from distengine.checkpoint.faults import fault_point
from distengine.checkpoint.hashing import HashingWriter, hash_stream

__all__ = ["FileInfo", "FileStat", "FileTooLargeError", "Storage", "temp_prefix"]

_OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"}
_WRITE_BUFFER = 1 << 20
_READ_SLICE = 16 << 20


@dataclass(frozen=True)
class FileInfo:
    """Size and SHA-256 of a file as it was written."""

    size: int
    sha256: str


class FileStat(NamedTuple):
    """A listed file: its size and a version token (mtime or ETag; ``None`` if unknown)."""

    size: int
    version: Any = None


class FileTooLargeError(ValueError):
    """A file that should be small (a manifest) is larger than the limit; it is not read."""


def temp_prefix(name: str) -> str:
    """The prefix of the temporary files a write of ``name`` uses (``.{name}.tmp-``).

    Example:
        >>> temp_prefix("checkpoint_1.pt")
        '.checkpoint_1.pt.tmp-'
    """
    return f".{name}.tmp-"


class Storage:
    """A directory given as a local path or an fsspec URL, plus its storage options.

    Args:
        url: a local path (``"/ckpt"``, ``"~/ckpt"``, a ``pathlib.Path``) or a URL
            (``"s3://bucket/run1"``, ``"memory://run1"``).
        io_timeout: seconds after which a stalled storage call fails (see
            :mod:`~distengine.checkpoint.deadline`); default ``DISTENGINE_STORAGE_TIMEOUT``
            or 120.
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

    def __init__(
        self, url: str | os.PathLike, *, io_timeout: float | None = None, **storage_options: Any
    ):
        if not isinstance(url, (str, os.PathLike)):
            raise TypeError(f"Expected a directory path or URL (str), got {type(url).__name__}")
        url = os.fspath(url)
        if not url:
            raise ValueError("Expected a directory path or URL, got an empty string")
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        if protocol == "file":
            url = os.path.abspath(os.path.expanduser(url.removeprefix("file://")))
        # fsspec reuses filesystem instances per process (a forked rank gets its own);
        # what must not be reused is a cached directory listing, see list_files().
        self.fs, self.root = fsspec.core.url_to_fs(url, **storage_options)
        self.root = self.root.rstrip("/") or self.root
        self.protocol = protocol
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.is_object_store = protocol in _OBJECT_STORES
        self.url = url.rstrip("/") if protocol != "file" else self.root
        self.storage_options = storage_options
        self.io_timeout = resolve_io_timeout(io_timeout)

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

    def _bounded(self, fn: Callable[[], Any], what: str) -> Any:
        return call_bounded(fn, self.io_timeout, what)

    # --- directory -----------------------------------------------------------------------
    def ensure_dir(self, create: bool) -> None:
        """Creates the directory if asked, then checks that it can hold files.

        Raises:
            ValueError: the directory (or, on an object store, its bucket) is missing, or
                the path is a file.
        """
        self._bounded(lambda: self._ensure_dir(create), f"checking the directory {self.url}")

    def _ensure_dir(self, create: bool) -> None:
        if self.is_local:
            if os.path.exists(self.root) and not os.path.isdir(self.root):
                raise ValueError(
                    f"Expected a directory for checkpoints, but '{self.root}' is a file"
                )
            if create:
                os.makedirs(self.root, exist_ok=True)
            if not os.path.isdir(self.root):
                raise ValueError(f"Directory path '{self.root}' is not found (create_dir=False)")
            return
        if self.fs.isfile(self.root):
            raise ValueError(f"Expected a directory for checkpoints, but '{self.url}' is a file")
        if create and not self.is_object_store:
            self.fs.makedirs(self.root, exist_ok=True)
        # Object stores have no directories: a prefix "exists" once its bucket does.
        bucket = self.root.split("/", 1)[0]
        if not (self.fs.exists(self.root) or self.fs.exists(bucket)):
            raise ValueError(
                f"Directory '{self.url}' is not found: its bucket '{bucket}' does not exist"
            )

    def list_files(self) -> dict[str, FileStat]:
        """``{name: FileStat}`` of the files directly in the directory (fresh listing)."""
        return self._bounded(self._list_files, f"listing {self.url}")

    def _list_files(self) -> dict[str, FileStat]:
        if self.is_local:
            out: dict[str, FileStat] = {}
            try:
                with os.scandir(self.root) as it:
                    for e in it:
                        try:
                            if e.is_file(follow_symlinks=False):
                                st = e.stat(follow_symlinks=False)
                                out[e.name] = FileStat(st.st_size, st.st_mtime_ns)
                        except FileNotFoundError:
                            continue  # removed while listing
            except FileNotFoundError:
                return {}
            return out
        self.fs.invalidate_cache(self.root)
        try:
            entries = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return {}
        return {
            e["name"].rstrip("/").rsplit("/", 1)[-1]: FileStat(
                int(e.get("size") or 0),
                e.get("ETag") or e.get("etag") or e.get("LastModified") or e.get("mtime"),
            )
            for e in entries
            if e.get("type") == "file"
        }

    def exists(self, name: str) -> bool:
        """Whether ``name`` exists in the directory."""
        return self._bounded(
            lambda: (
                os.path.lexists(self.path(name))
                if self.is_local
                else self.fs.exists(self.path(name))
            ),
            f"looking for {self.url_of(name)}",
        )

    def remove(self, name: str) -> None:
        """Deletes ``name``; a file that is already gone is not an error."""

        def rm() -> None:
            try:
                if self.is_local:
                    os.remove(self.path(name))
                else:
                    self.fs.rm_file(self.path(name))
            except FileNotFoundError:
                pass

        self._bounded(rm, f"removing {self.url_of(name)}")

    def remove_temporaries(self, name: str, files: dict[str, FileStat] | None = None) -> list[str]:
        """Deletes the temporary files of unfinished writes of ``name``; returns their names."""
        files = self.list_files() if files is None else files
        stale = [n for n in files if n.startswith(temp_prefix(name))]
        for n in stale:
            self.remove(n)
        return stale

    def abort_uploads(self, name: str) -> int:
        """Aborts unfinished multipart uploads of ``name`` (S3); returns how many.

        A writer killed in the middle of a large upload leaves the parts on the store,
        invisible in listings but billed. Other filesystems have nothing to abort.
        """
        call = getattr(self.fs, "call_s3", None)
        if not self.is_object_store or not callable(call):
            return 0
        bucket, _, key = self.path(name).partition("/")

        def abort() -> int:
            listed = call("list_multipart_uploads", Bucket=bucket, Prefix=key)
            uploads = [u for u in listed.get("Uploads", []) or [] if u.get("Key") == key]
            for u in uploads:
                call("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=u["UploadId"])
            return len(uploads)

        return self._bounded(abort, f"aborting unfinished uploads of {self.url_of(name)}")

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

        Raises:
            CheckpointTimeoutError: no byte could be written for the I/O timeout.
        """
        progress = Progress()
        write = self._write_local if self.is_local else self._write_remote

        def job() -> FileInfo:
            return write(name, produce, atomic, partial_phase, commit_phase, progress)

        return call_with_progress(job, progress, self.io_timeout, f"writing {self.url_of(name)}")

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

    def write_marker(self, name: str, data: bytes) -> None:
        """Writes a small bookkeeping file without durability guarantees (no fsync)."""

        def put() -> None:
            if self.is_local:
                with open(self.path(name), "wb") as f:
                    f.write(data)
            else:
                self.fs.pipe_file(self.path(name), data)

        self._bounded(put, f"writing {self.url_of(name)}")

    def link(self, src: str, dst: str) -> None:
        """Makes ``dst`` a copy of ``src`` (``dst`` must not exist): a hard link on a local
        disk, a server-side copy on object stores; atomic either way."""

        def run() -> None:
            if self.is_local:
                try:
                    os.link(self.path(src), self.path(dst))
                except FileExistsError:
                    raise
                except OSError:  # no hard links here: copy through a temporary file
                    self._write_local(
                        dst,
                        lambda f: _copy_file(self.path(src), f),
                        True,
                        "payload_partial",
                        None,
                        Progress(),
                    )
                _fsync_dir(self.root)
            else:
                self.fs.copy(self.path(src), self.path(dst))

        self._bounded(run, f"copying {self.url_of(src)} to {self.url_of(dst)}")

    def _write_local(
        self,
        name: str,
        produce: Callable[[BinaryIO], None],
        atomic: bool,
        partial_phase: str,
        commit_phase: str | None,
        progress: Progress,
    ) -> FileInfo:
        final = self.path(name)
        target = self.path(_tmp_name(name)) if atomic else final
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_EXCL if atomic else 0)
        fd = os.open(target, flags, 0o666)
        try:
            with open(fd, "wb", buffering=_WRITE_BUFFER) as raw:
                writer = _produce(raw, produce, partial_phase, progress)
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
        progress: Progress,
    ) -> FileInfo:
        final = self.path(name)
        if self.is_object_store:
            # The store publishes the object whole when the upload completes, or never.
            f = self.fs.open(final, "wb")
            try:
                writer = _produce(f, produce, partial_phase, progress)
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
                writer = _produce(f, produce, partial_phase, progress)
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
    def read(self, name: str, limit: int | None = None) -> bytes:
        """The whole content of ``name`` (for small files such as manifests).

        Args:
            limit: if given, a file larger than this many bytes is not read.

        Raises:
            FileTooLargeError: the file is larger than ``limit``.
            FileNotFoundError: it does not exist.
        """

        def run() -> bytes:
            if self.is_local:
                with open(self.path(name), "rb") as f:
                    if limit is None:
                        return f.read()
                    data = f.read(limit + 1)
            elif limit is None:
                return self.fs.cat_file(self.path(name))
            else:
                data = self.fs.cat_file(self.path(name), start=0, end=limit + 1)
            if len(data) > limit:
                raise FileTooLargeError(f"{self.url_of(name)}: larger than {limit} bytes, not read")
            return data

        return self._bounded(run, f"reading {self.url_of(name)}")

    def open_read(self, name: str, progress: Progress | None = None) -> BinaryIO:
        """A readable, seekable file object for ``name`` (the caller closes it).

        Remote files are downloaded whole (in slices, each bounded in time); local files
        are opened in place. ``progress`` (if given) counts the bytes read through it.
        """
        if self.is_local:
            f = self._bounded(lambda: open(self.path(name), "rb"), f"opening {self.url_of(name)}")
            return CountingReader(f, progress) if progress is not None else f
        data = self._download(name, None)
        return io.BytesIO(data)

    def _download(self, name: str, sha: Any) -> bytes:
        progress = Progress()

        def run() -> bytes:
            out = bytearray()
            with self.fs.open(self.path(name), "rb", block_size=_READ_SLICE) as f:
                while chunk := f.read(_READ_SLICE):
                    out += chunk
                    if sha is not None:
                        sha.update(chunk)
                    progress.add(len(chunk))
            return bytes(out)

        return call_with_progress(run, progress, self.io_timeout, f"reading {self.url_of(name)}")

    def verify(self, name: str, *, size: int, sha256: str) -> None:
        """Checks ``name`` against the expected size and digest, reading it once in slices.

        Raises:
            CheckpointIntegrityError: naming the file and what does not match.
            FileNotFoundError: if it does not exist.
        """
        self.open_verified(name, size=size, sha256=sha256).close()

    def open_verified(self, name: str, *, size: int, sha256: str) -> BinaryIO:
        """Opens ``name`` after checking its size and SHA-256; returns it at position 0.

        The check and the later read go through the same open file (or the same
        downloaded bytes), so what is loaded is what was verified, even if the name is
        replaced meanwhile.

        Raises:
            CheckpointIntegrityError: naming the file and what does not match.
        """
        if not self.is_local:
            sha = hashlib.sha256()
            data = self._download(name, sha)
            self._check(name, len(data), size, sha.hexdigest(), sha256)
            return io.BytesIO(data)
        f = self.open_read(name)
        try:
            progress = Progress()

            def digest() -> tuple[int, str]:
                f.seek(0, io.SEEK_END)
                found = f.tell()
                if found != size:
                    return found, ""
                f.seek(0)
                return hash_stream(
                    CountingReader(f, progress), buffer_size=min(max(size, 1), _READ_SLICE)
                )

            found, got = call_with_progress(
                digest, progress, self.io_timeout, f"reading {self.url_of(name)}"
            )
            self._check(name, found, size, got, sha256)
            f.seek(0)
        except BaseException:
            f.close()
            raise
        return f

    def read_ranges(
        self,
        name: str,
        ranges: list[tuple[int, int, Any]],
        on_range: Callable[[int, memoryview], None],
    ) -> None:
        """Reads the byte ranges ``(start, length, into)`` of ``name`` in the order given
        and hands each to ``on_range(index, data)`` before the next is read (ranged reads on
        object stores: nothing else of the file is fetched).

        ``into`` is a writable buffer of ``length`` bytes to read into, or ``None``: then
        ``data`` is a view of a buffer reused for the next range (copy what must outlive
        the call). Bounded by progress: no byte read for the I/O timeout fails.

        Raises:
            CheckpointIntegrityError: the file ends before a range does (truncated).
            FileNotFoundError: the file does not exist.
        """
        progress = Progress()
        scratch = bytearray(max((length for _, length, into in ranges if into is None), default=0))

        def run() -> None:
            if self.is_local:
                raw: Any = open(self.path(name), "rb", buffering=0)
            else:
                raw = self.fs.open(self.path(name), "rb", block_size=_READ_SLICE)
            with raw:
                for i, (start, length, into) in enumerate(ranges):
                    raw.seek(start)
                    view = memoryview(scratch if into is None else into).cast("B")[:length]
                    done = 0
                    while done < length:
                        n = raw.readinto(view[done : done + _READ_SLICE])
                        if not n:
                            raise CheckpointIntegrityError(
                                f"{self.url_of(name)}: ends at byte {start + done}, expected "
                                f"at least {start + length} bytes (truncated)"
                            )
                        done += n
                        progress.add(n)
                    on_range(i, view)

        call_with_progress(run, progress, self.io_timeout, f"reading {self.url_of(name)}")

    def _check(self, name: str, found: int, size: int, got: str, sha256: str) -> None:
        if found != size:
            raise CheckpointIntegrityError(
                f"{self.url_of(name)}: expected {size} bytes (from its manifest), found {found}"
            )
        if got != sha256:
            raise CheckpointIntegrityError(
                f"{self.url_of(name)}: SHA-256 mismatch: manifest says {sha256}, content is {got}"
            )

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"


class CountingReader:
    """A read-only file wrapper that counts the bytes read (progress for bounded calls)."""

    def __init__(self, raw: BinaryIO, progress: Progress | None):
        self._raw = raw
        self._progress = progress if progress is not None else Progress()

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._progress.add(len(data))
        return data

    def readinto(self, buf: Any) -> int:
        n = self._raw.readinto(buf) or 0
        self._progress.add(n)
        return n

    def readline(self, limit: int = -1) -> bytes:
        data = self._raw.readline(limit)
        self._progress.add(len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def __enter__(self) -> CountingReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._raw.close()


def _copy_file(src: str, dst: BinaryIO) -> None:
    with open(src, "rb") as f:
        shutil.copyfileobj(f, dst, _READ_SLICE)


def _tmp_name(name: str) -> str:
    return f"{temp_prefix(name)}{uuid.uuid4().hex[:12]}"


def _produce(
    raw: Any, produce: Callable[[BinaryIO], None], partial_phase: str, progress: Progress
) -> HashingWriter:
    """Runs ``produce`` into a hashing writer; returns the writer (size, digest)."""
    writer = HashingWriter(raw, on_write=_partial_hook(raw, partial_phase), progress=progress)
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
