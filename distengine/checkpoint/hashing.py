"""SHA-256 computed while bytes are written or read, not in a second pass over the file.

Hashing runs on a helper thread in parallel with the file write of the same buffer:
both release the GIL, and SHA-256 (about 1-2 GB/s on one core) is faster than writing
to disk, so the digest costs almost no wall time. Small writes (pickle headers) are
hashed inline, where a thread hand-off would cost more than the hash.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

__all__ = ["HashingWriter", "hash_stream"]

# Below this, hash inline; above, overlap hashing with the write on a helper thread.
_PARALLEL_MIN_BYTES = 1 << 20
# Reads are done in slices of this size so hashing of one overlaps reading the next.
_READ_SLICE = 16 << 20


class HashingWriter:
    """A write-only file object that forwards bytes to ``raw`` and hashes them on the way.

    Args:
        raw: the destination file object (anything with ``write``).
        on_write: optional callback run before each write with the number of bytes
            written so far (the writer's fault-injection hook uses it).
        progress: optional counter (anything with ``add(n)``) told of every byte written,
            so that a bounded call can tell a slow write from a stalled one.

    Example:
        >>> import io
        >>> with HashingWriter(io.BytesIO()) as w:
        ...     _ = w.write(b"abc")
        >>> w.size, w.hexdigest()[:8]
        (3, 'ba7816bf')
    """

    def __init__(
        self,
        raw: BinaryIO,
        on_write: Callable[[int], None] | None = None,
        progress: Any = None,
    ):
        self._raw = raw
        self._progress = progress
        self._sha = hashlib.sha256()
        self._on_write = on_write
        self._pool: ThreadPoolExecutor | None = None
        self.size = 0
        self.error: BaseException | None = None  # first error of a write, kept for the caller

    def write(self, data: Any) -> int:
        """Writes ``data`` (bytes-like) to the destination and adds it to the digest."""
        try:
            return self._write(data)
        except BaseException as e:
            # Serializers may replace our error with their own (torch.save does): keep it.
            if self.error is None:
                self.error = e
            raise

    def _write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        if self._on_write is not None:
            self._on_write(self.size)
        if n >= _PARALLEL_MIN_BYTES:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="distengine-sha256"
                )
            pending = self._pool.submit(self._sha.update, view)
            try:
                self._raw.write(view)
            finally:
                # The buffer belongs to the caller: it must not be read after we return.
                pending.result()
        else:
            self._raw.write(view)
            self._sha.update(view)
        self.size += n
        if self._progress is not None:
            self._progress.add(n)
        return n

    def flush(self) -> None:
        """Flushes the destination."""
        self._raw.flush()

    def hexdigest(self) -> str:
        """Hex SHA-256 of everything written so far."""
        return self._sha.hexdigest()

    def close(self) -> None:
        """Stops the helper thread; the destination stays open (its owner closes it)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def hash_stream(raw: BinaryIO, buffer_size: int = _READ_SLICE) -> tuple[int, str]:
    """Size and SHA-256 of ``raw`` from its position to its end, without keeping the data.

    Two buffers of ``buffer_size`` bytes alternate: one is hashed on a helper thread
    while the next is read.

    Example:
        >>> import io
        >>> size, digest = hash_stream(io.BytesIO(b"abc"))
        >>> size, digest[:8]
        (3, 'ba7816bf')
    """
    sha = hashlib.sha256()
    buffers = [bytearray(buffer_size), bytearray(buffer_size)]
    size = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="distengine-sha256") as pool:
        pending = None
        for turn in itertools.count():
            buf = memoryview(buffers[turn % 2])
            n = _read_into(raw, buf)
            if pending is not None:
                pending.result()  # the other buffer is free again only after this
            if not n:
                break
            size += n
            pending = pool.submit(sha.update, buf[:n])
    return size, sha.hexdigest()


def _read_into(raw: BinaryIO, buf: memoryview) -> int:
    readinto = getattr(raw, "readinto", None)
    if readinto is not None:
        return readinto(buf) or 0
    chunk = raw.read(len(buf))
    buf[: len(chunk)] = chunk
    return len(chunk)
