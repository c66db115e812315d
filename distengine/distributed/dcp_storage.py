"""DCP's storage layer, written through distengine's files: one hashed file per rank.

``torch.distributed.checkpoint`` (DCP) plans a sharded save or load (which rank writes or
reads which chunk of which tensor, resharding between world sizes) and hands the bytes to a
*storage writer/reader*. :class:`ShardWriter` and :class:`ShardReader` are that layer here:

- each rank writes its chunks into **one file**, through a ``write_file(name, produce)``
  callable the checkpoint package provides (atomic commit, SHA-256 computed while
  writing, bounded in time); the file's name is chosen by the caller;
- items are stored as DCP's own file format stores them (``torch.save`` of each tensor
  chunk, raw bytes for other values), at offsets recorded per item;
- DCP gathers every rank's write results to its coordinator, whose :meth:`finish` puts
  the item offsets *and every file's size and SHA-256* into the metadata that DCP then
  returns on every rank: nothing else needs gathering before the commit;
- reading opens each needed file through ``open_file(name)``, which verifies the file
  against its digest first; values that are not tensors load with ``weights_only=True``.

The metadata is turned into plain data (:func:`encode_metadata`; lists, dicts, numbers,
strings) so that it can live in a payload that ``torch.load(weights_only=True)`` reads.

Imported lazily by :mod:`.sharded` (importing DCP takes seconds).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from typing import Any, BinaryIO

import torch
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
    "SafeLoadPlanner",
    "ShardReader",
    "ShardWriter",
    "decode_metadata",
    "encode_metadata",
]

FORMAT = 1  # version of the plain-data form of the metadata (encode_metadata)

WriteFile = Callable[[str, Callable[[BinaryIO], None]], tuple[int, str]]
OpenFile = Callable[[str], BinaryIO]


@dataclasses.dataclass(frozen=True)
class _Chunk:
    """Where one item of the checkpoint lies: its file, offset and length, plus the
    size and SHA-256 of that whole file (known once the file is committed)."""

    file: str
    offset: int
    length: int
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
        placed: list[tuple[Any, int, int]] = []  # (index, offset, length)

        def produce(raw: BinaryIO) -> None:
            f = _Counting(raw)
            for item in items:
                start = f.written
                data = planner.resolve_data(item)
                if item.type == WriteItemType.BYTE_IO:
                    f.write(data.getbuffer())
                else:
                    torch.save(_cpu_tensor(data), f)
                placed.append((item.index, start, f.written - start))

        results: list[WriteResult] = []
        if items:
            size, sha256 = self.write_file(self.file_name, produce)
            results = [
                WriteResult(
                    index=index,
                    size_in_bytes=length,
                    storage_data=_Chunk(self.file_name, offset, length, size, sha256),
                )
                for index, offset, length in placed
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
                items.append((_index_key(r.index), c.file, c.offset, c.length))
                files[c.file] = (c.file_size, c.file_sha256)
        metadata.storage_data = {"items": items, "files": files}

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return False


class ShardReader(StorageReader):
    """Reads the items a DCP load asks for, from files opened (and verified) by ``open_file``.

    Args:
        metadata: the metadata of the save (:func:`decode_metadata`).
        open_file: ``open_file(name) -> binary file``, seekable, positioned at 0, whose
            content was checked against the file's size and SHA-256.
    """

    def __init__(self, metadata: Metadata, open_file: OpenFile):
        super().__init__()
        self.metadata = metadata
        self.open_file = open_file
        self._where = {
            (fqn, offset): (file, start, length)
            for (fqn, offset), file, start, length in metadata.storage_data["items"]
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
        per_file: dict[str, list[tuple[Any, int, int]]] = {}
        for req in plan.items:
            file, start, length = self._where[_index_key(req.storage_index)]
            per_file.setdefault(file, []).append((req, start, length))
        for file, reqs in per_file.items():
            with self.open_file(file) as f:
                for req, start, length in sorted(reqs, key=lambda r: r[1]):
                    f.seek(start)
                    data = f.read(length)
                    if len(data) != length:
                        raise OSError(
                            f"{file}: expected {length} bytes at offset {start}, read {len(data)}"
                        )
                    if req.type == LoadItemType.BYTE_IO:
                        planner.load_bytes(req, io.BytesIO(data))
                        continue
                    tensor = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
                    tensor = _narrow(tensor, req.storage_offsets, req.lengths)
                    target = planner.resolve_tensor(req).detach()
                    if target.size() != tensor.size():
                        raise ValueError(
                            f"{req.storage_index.fqn}: the checkpoint's chunk has shape "
                            f"{tuple(tensor.size())}, the target {tuple(target.size())}"
                        )
                    target.copy_(tensor)
                    planner.commit_tensor(req, target)
        fut: Future = Future()
        fut.set_result(None)
        return fut

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return False


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
    where every item lies (file, offset, length); plus every file's size and SHA-256.

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
            [fqn, None if offset is None else list(offset), file, start, length]
            for (fqn, offset), file, start, length in storage["items"]
        ],
        "files": {name: [size, sha] for name, (size, sha) in storage["files"].items()},
    }


def decode_metadata(data: Any) -> Metadata:
    """The inverse of :func:`encode_metadata`.

    Raises:
        ValueError: ``data`` is not metadata this version can read.
    """
    try:
        if data["format"] != FORMAT:
            raise ValueError(f"expected format {FORMAT}, got {data['format']!r}")
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
            ((fqn, None if offset is None else tuple(offset)), file, start, length)
            for fqn, offset, file, start, length in data["items"]
        ]
        files = {name: (size, sha) for name, (size, sha) in data["files"].items()}
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"damaged sharded-state metadata: {type(e).__name__}: {e}") from None
    return Metadata(
        state_dict_metadata=entries,
        storage_data={"items": items, "files": files},
        version=data.get("version"),
    )
