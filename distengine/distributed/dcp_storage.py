"""DCP's storage layer, written through distengine's files: one hashed file per rank.

``torch.distributed.checkpoint`` (DCP) plans a sharded save or load (which rank writes or
reads which chunk of which tensor, resharding between world sizes) and hands the bytes to a
*storage writer/reader*. :class:`ShardWriter` and :class:`ShardReader` are that layer here:

- each rank writes its chunks into **one file**, through a ``write_file(name, produce)``
  callable the checkpoint package provides (atomic commit, SHA-256 computed while
  writing, bounded in time); the file's name is chosen by the caller;
- a tensor chunk is stored as its raw bytes (contiguous, this machine's byte order), a
  value that is not a tensor as DCP serialises it; each item's offset, length, dtype and
  shape are recorded, so loading needs no deserialisation of tensors: the bytes are
  viewed as a tensor and copied into the target;
- DCP gathers every rank's write results to its coordinator, whose :meth:`finish` puts
  the item offsets *and every file's size and SHA-256* into the metadata that DCP then
  returns on every rank: nothing else needs gathering before the commit;
- every item also gets a digest of its own (XXH3-128, :data:`ITEM_DIGEST`): a rank that
  loads reads only the items its shards need (ranged reads through a
  ``read_file(name, spans, on_span)`` callable), and each item is checked against its
  digest before it is used. The whole files' SHA-256, in the manifest, stay what
  ``latest`` verifies; values that are not tensors load with ``weights_only=True``.

Why two digests: a file's SHA-256 is computed while it is written (no second pass) and is
what anyone can check with ``sha256sum``; a load reads chunks, not files, so each chunk
needs a digest of its own, and hashing every byte again with SHA-256 (about 1 GB/s on one
core) would cost as much as the read itself. XXH3-128 runs at about 10 GB/s and misses an
accidental change with probability 2**-128; neither digest is a signature (whoever can
rewrite the files can rewrite the manifest), so a cryptographic hash per chunk would buy
nothing more. Checkpoints of format 1 (per-item SHA-256) still load.

The metadata is turned into plain data (:func:`encode_metadata`; lists, dicts, numbers,
strings) so that it can live in a payload that ``torch.load(weights_only=True)`` reads.

Imported lazily by :mod:`.sharded` (importing DCP takes seconds).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

import torch
import xxhash
from torch.distributed.checkpoint import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    DefaultLoadPlanner,
    LoadPlan,
    LoadPlanner,
    Metadata,
    SavePlan,
    SavePlanner,
    StorageReader,
    StorageWriter,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.metadata import TensorProperties
from torch.distributed.checkpoint.planner import LoadItemType, WriteItemType
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

__all__ = [
    "FORMAT",
    "ITEM_DIGEST",
    "ItemDigest",
    "SafeLoadPlanner",
    "ShardReader",
    "ShardWriter",
    "decode_metadata",
    "encode_metadata",
]

# version of the plain-data form of the metadata (encode_metadata); 1: items' digests are
# SHA-256, 2: the metadata names the items' digest
FORMAT = 2

# hex digest of an item's bytes, by algorithm name (the metadata records which one was used)
_DIGESTS: dict[str, Callable[[Any], str]] = {
    "xxh3_128": xxhash.xxh3_128_hexdigest,
    "sha256": lambda data: hashlib.sha256(data).hexdigest(),
}
_HEX_LENGTH = {"xxh3_128": 32, "sha256": 64}
ITEM_DIGEST = "xxh3_128"  # what a save uses

WriteFile = Callable[[str, Callable[[BinaryIO], None]], tuple[int, str]]
# read_file(name, [(start, length, digest, into), ...], on_span(index, data)): reads the
# spans in order (into the buffer ``into`` when given, else into one reused after the call),
# checks each one against its ItemDigest, hands it over
ReadFile = Callable[[str, list[tuple[int, int, Any, Any]], Callable[[int, memoryview], None]], None]


@dataclasses.dataclass(frozen=True)
class ItemDigest:
    """The digest one stored item must have: its algorithm and value (lowercase hex).

    Example:
        >>> d = ItemDigest("sha256", hashlib.sha256(b"abc").hexdigest())
        >>> d.matches(b"abc"), d.matches(b"abd")
        (True, False)
        >>> ItemDigest(ITEM_DIGEST, ItemDigest.compute(ITEM_DIGEST, b"abc")).matches(b"abc")
        True
    """

    algorithm: str
    hexdigest: str

    @staticmethod
    def compute(algorithm: str, data: Any) -> str:
        """The hex digest of ``data`` (any buffer) with ``algorithm``."""
        return _DIGESTS[algorithm](data)

    def of(self, data: Any) -> str:
        """The digest of ``data`` with this digest's algorithm."""
        return _DIGESTS[self.algorithm](data)

    def matches(self, data: Any) -> bool:
        return self.of(data) == self.hexdigest


@dataclasses.dataclass(frozen=True)
class _Chunk:
    """Where one item of the checkpoint lies: its file, offset and length, its dtype and
    shape (tensors; ``None`` for other values) and digest (:data:`ITEM_DIGEST`), plus the
    size and SHA-256 of that whole file (known once the file is committed)."""

    file: str
    offset: int
    length: int
    dtype: str | None
    shape: tuple[int, ...] | None
    digest: str
    file_size: int
    file_sha256: str


class _Counting:
    """Forwards writes to ``raw`` and counts the bytes (the items' offsets)."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self.written = 0

    def write(self, data: Any) -> int:
        n = self._raw.write(data)
        if n is None:
            n = memoryview(data).nbytes
        self.written += n
        return n

    def flush(self) -> None:
        flush = getattr(self._raw, "flush", None)
        if callable(flush):
            flush()


def _cpu_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The chunk to store: detached, on CPU, owning exactly its elements (``torch.save``
    of a view would store the whole underlying storage)."""
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size() or not t.is_contiguous():
        t = t.contiguous().clone()
    return t


class ShardWriter(StorageWriter):
    """Writes this rank's part of a DCP save as one file (see the module docstring).

    Args:
        file_name: the file this rank writes (a rank with nothing to write writes none).
        write_file: ``write_file(name, produce) -> (size, sha256)``; ``produce(f)``
            writes the content into ``f``; the call returns once the file is durable.
    """

    def __init__(self, file_name: str, write_file: WriteFile):
        super().__init__()
        self.file_name = file_name
        self.write_file = write_file

    def reset(self, checkpoint_id: Any = None) -> None:
        pass

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        pass

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        return plans

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        items = sorted(plan.items, key=lambda it: it.type != WriteItemType.BYTE_IO)
        placed: list[tuple[Any, int, int, str | None, tuple | None, str]] = []

        def produce(raw: BinaryIO) -> None:
            f = _Counting(raw)
            for item in items:
                start = f.written
                data = planner.resolve_data(item)
                if item.type == WriteItemType.BYTE_IO:
                    view, dtype, shape = data.getbuffer(), None, None
                else:
                    t = _cpu_tensor(data)
                    view = memoryview(t.reshape(-1).view(torch.uint8).numpy())
                    dtype, shape = _dtype_name(t.dtype), tuple(t.shape)
                digest = ItemDigest.compute(ITEM_DIGEST, view)  # ~10 GB/s: inline
                if view.nbytes:
                    f.write(view)
                placed.append((item.index, start, f.written - start, dtype, shape, digest))

        results: list[WriteResult] = []
        if items:
            size, sha256 = self.write_file(self.file_name, produce)
            results = [
                WriteResult(
                    index=index,
                    size_in_bytes=length,
                    storage_data=_Chunk(
                        self.file_name, offset, length, dtype, shape, digest, size, sha256
                    ),
                )
                for index, offset, length, dtype, shape, digest in placed
            ]
        fut: Future[list[WriteResult]] = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """Coordinator: records where every item lies and every file's size and digest
        (DCP then returns this metadata on every rank); writes nothing."""
        items, files = [], {}
        for per_rank in results:
            for r in per_rank:
                c: _Chunk = r.storage_data
                items.append(
                    (_index_key(r.index), c.file, c.offset, c.length, c.dtype, c.shape, c.digest)
                )
                files[c.file] = (c.file_size, c.file_sha256)
        metadata.storage_data = {
            "items": items,
            "files": files,
            "byteorder": sys.byteorder,
            "digest": ITEM_DIGEST,
        }

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return False


class ShardReader(StorageReader):
    """Reads the items a DCP load asks for, each once, through ``read_file``, which checks
    every item against its digest before handing it over.

    Args:
        metadata: the metadata of the save (:func:`decode_metadata`).
        read_file: ``read_file(name, spans, on_span)``: reads the ``(start, length,
            digest, into)`` spans of ``name`` in order (``digest`` an :class:`ItemDigest`)
            and calls ``on_span(index, bytes)`` for each, once its digest matched.
    """

    def __init__(self, metadata: Metadata, read_file: ReadFile):
        super().__init__()
        self.metadata = metadata
        self.read_file = read_file
        order = metadata.storage_data.get("byteorder", sys.byteorder)
        if order != sys.byteorder:
            raise ValueError(
                f"the checkpoint's tensors are stored {order}-endian, this machine is "
                f"{sys.byteorder}-endian"
            )
        self._digest = metadata.storage_data.get("digest", "sha256")
        self._where = {
            key: (file, start, length, dtype, shape, sha)
            for key, file, start, length, dtype, shape, sha in metadata.storage_data["items"]
        }

    def reset(self, checkpoint_id: Any = None) -> None:
        pass

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return self.metadata

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        pass

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        # file -> stored item (start, length, dtype, shape, digest) -> the requests it serves
        per_file: dict[str, dict[tuple, list]] = {}
        for req in plan.items:
            file, *stored = self._where[_index_key(req.storage_index)]
            per_file.setdefault(file, {}).setdefault(tuple(stored), []).append(req)
        for file, by_item in per_file.items():
            stored = sorted(by_item, key=lambda it: it[0])  # in file order
            direct = [_direct_target(it, by_item[it], planner) for it in stored]
            spans = [
                (
                    start,
                    length,
                    ItemDigest(self._digest, sha),
                    None if t is None else _bytes_of(t),
                )
                for (start, length, _, _, sha), t in zip(stored, direct)
            ]

            def serve(
                i: int, data: memoryview, stored: list = stored, by_item: dict = by_item,
                direct: list = direct,
            ) -> None:  # fmt: skip
                if direct[i] is not None:  # read straight into the target, then checked
                    planner.commit_tensor(by_item[stored[i]][0], direct[i])
                else:
                    _serve(data, stored[i], by_item[stored[i]], planner)

            self.read_file(file, spans, serve)
        fut: Future = Future()
        fut.set_result(None)
        return fut

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return False


def _serve(buf: memoryview, stored: tuple, reqs: list, planner: LoadPlanner) -> None:
    """Hands one stored item (its verified bytes; the buffer is reused afterwards: every
    request copies what it takes) to the requests it serves."""
    _, length, dtype, shape, _ = stored
    for req in reqs:
        if req.type == LoadItemType.BYTE_IO:
            planner.load_bytes(req, io.BytesIO(bytes(buf)))
            continue
        if dtype is None or shape is None:
            raise ValueError(f"{req.storage_index.fqn}: stored without dtype or shape")
        raw = (
            torch.frombuffer(buf, dtype=torch.uint8)
            if length
            else torch.empty(0, dtype=torch.uint8)
        )
        tensor = _narrow(raw.view(_dtype(dtype)).reshape(shape), req.storage_offsets, req.lengths)
        target = planner.resolve_tensor(req).detach()
        if target.size() != tensor.size():
            raise ValueError(
                f"{req.storage_index.fqn}: the checkpoint's chunk has shape "
                f"{tuple(tensor.size())}, the target {tuple(target.size())}"
            )
        target.copy_(tensor)
        planner.commit_tensor(req, target)


def _direct_target(stored: tuple, reqs: list, planner: LoadPlanner) -> torch.Tensor | None:
    """The target tensor when a stored chunk fills it exactly (same shape and dtype,
    contiguous, on CPU): its bytes are then read in place, no copy (the usual case at the
    same world size)."""
    _, length, dtype, shape, _ = stored
    if len(reqs) != 1 or dtype is None or shape is None or not length:
        return None
    req = reqs[0]
    if req.type == LoadItemType.BYTE_IO or any(req.storage_offsets):
        return None
    if tuple(req.lengths) != tuple(shape):
        return None
    target = planner.resolve_tensor(req).detach()
    if (
        target.device.type != "cpu"
        or not target.is_contiguous()
        or _dtype_name(target.dtype) != dtype
        or tuple(target.shape) != tuple(shape)
        or target.numel() * target.element_size() != length
    ):
        return None
    return target


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    """A writable view of a contiguous CPU tensor's bytes."""
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in the checkpoint")
    return dtype


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, except that values which are not tensors (optimizer
    hyper-parameters, counters) load with ``weights_only=True``."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            _set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def _set_element(root: Any, path: tuple, value: Any) -> None:
    from torch.distributed.checkpoint._traverse import set_element

    set_element(root, path, value)


def _narrow(tensor: torch.Tensor, offsets: Any, lengths: Any) -> torch.Tensor:
    for dim, (start, length) in enumerate(zip(offsets, lengths)):
        if start != 0 or length != tensor.size(dim):
            tensor = tensor.narrow(dim, start, length)
    return tensor


def _index_key(index: Any) -> tuple[str, tuple[int, ...] | None]:
    offset = None if index.offset is None else tuple(int(o) for o in index.offset)
    return index.fqn, offset


# --- metadata as plain data -----------------------------------------------------------------


def encode_metadata(metadata: Metadata) -> dict[str, Any]:
    """The metadata of a save as lists, dicts, numbers and strings.

    Keeps what loading needs: each entry's kind, dtype, global size and chunks, and
    where every item lies (file, offset, length) with its digest; plus every file's size
    and SHA-256.

    Example:
        >>> md = Metadata({"w": BytesStorageMetadata()}, storage_data={"items": [], "files": {}})
        >>> encode_metadata(md)["entries"]
        {'w': {'kind': 'bytes'}}
    """
    entries: dict[str, Any] = {}
    for fqn, md in metadata.state_dict_metadata.items():
        if isinstance(md, TensorStorageMetadata):
            entries[fqn] = {
                "kind": "tensor",
                "dtype": str(md.properties.dtype).removeprefix("torch."),
                "size": list(md.size),
                "chunks": [[list(c.offsets), list(c.sizes)] for c in md.chunks],
            }
        elif isinstance(md, BytesStorageMetadata):
            entries[fqn] = {"kind": "bytes"}
        else:
            raise TypeError(f"{fqn}: cannot store DCP metadata of type {type(md).__name__}")
    storage = metadata.storage_data or {"items": [], "files": {}}
    return {
        "format": FORMAT,
        "version": metadata.version,
        "entries": entries,
        "items": [
            [fqn, None if off is None else list(off), file, start, length, dtype, _list(shape), sha]
            for (fqn, off), file, start, length, dtype, shape, sha in storage["items"]
        ],
        "files": {name: [size, sha] for name, (size, sha) in storage["files"].items()},
        "byteorder": storage.get("byteorder", sys.byteorder),
        "digest": storage.get("digest", "sha256"),
    }


def _hex(value: Any, algorithm: str) -> str:
    n = _HEX_LENGTH[algorithm]
    if (
        not isinstance(value, str)
        or len(value) != n
        or any(c not in "0123456789abcdef" for c in value)
    ):
        raise ValueError(f"expected a {algorithm} digest ({n} hex digits), got {value!r}")
    return value


def _list(shape: Any) -> list[int] | None:
    return None if shape is None else [int(n) for n in shape]


def decode_metadata(data: Any) -> Metadata:
    """The inverse of :func:`encode_metadata`.

    Raises:
        ValueError: ``data`` is not metadata this version can read.
    """
    try:
        if data["format"] not in (1, FORMAT):
            raise ValueError(f"expected format 1 or {FORMAT}, got {data['format']!r}")
        digest = "sha256" if data["format"] == 1 else data["digest"]
        if digest not in _DIGESTS:
            raise ValueError(f"expected an item digest in {sorted(_DIGESTS)}, got {digest!r}")
        entries: dict[str, Any] = {}
        for fqn, e in data["entries"].items():
            if e["kind"] == "bytes":
                entries[fqn] = BytesStorageMetadata()
                continue
            dtype = getattr(torch, e["dtype"])
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"{fqn}: unknown dtype {e['dtype']!r}")
            entries[fqn] = TensorStorageMetadata(
                properties=TensorProperties(dtype=dtype),
                size=torch.Size(e["size"]),
                chunks=[
                    ChunkStorageMetadata(offsets=torch.Size(o), sizes=torch.Size(s))
                    for o, s in e["chunks"]
                ],
            )
        items = [
            (
                (fqn, None if off is None else tuple(off)),
                file,
                int(start),
                int(length),
                dtype,
                None if shape is None else tuple(int(n) for n in shape),
                _hex(sha, digest),
            )
            for fqn, off, file, start, length, dtype, shape, sha in data["items"]
        ]
        files = {name: (size, sha) for name, (size, sha) in data["files"].items()}
        byteorder = data["byteorder"]
        if byteorder not in ("little", "big"):
            raise ValueError(f"unknown byte order {byteorder!r}")
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(f"damaged sharded-state metadata: {type(e).__name__}: {e}") from None
    return Metadata(
        state_dict_metadata=entries,
        storage_data={"items": items, "files": files, "byteorder": byteorder, "digest": digest},
        version=data.get("version"),
    )
