"""Sharded state in checkpoints: which objects are saved shard by shard, and how they load.

**Which objects.** An object of ``to_save`` is *sharded state* when

- it is a model whose parameters or buffers are DTensors (FSDP2's ``fully_shard``), or a
  model made by ``idist.auto_model(model, sharding="fsdp")`` (also at world size 1, where
  it stays whole: its checkpoints keep one layout at every world size);
- it is an optimizer of such a model (the model must be in ``to_save`` too: the
  optimizer's state is saved by parameter name, which is what lets it load at another
  world size);
- its ``state_dict()`` holds DTensors (an EMA of a sharded model, say).

``Checkpoint(..., sharded=True)`` makes every model and optimizer sharded state as well: a replicated (DDP)
model is then written once, spread over the ranks, and loads into a sharded model too.

**Layout.** One checkpoint is the payload (written by the writing rank, as for any
checkpoint: the engine, per-rank state and every object that is not sharded), one file per
rank holding that rank's shards (``{payload}.rank{r}.distcp``), and the manifest, committed
last, listing all of them with their SHA-256. In the payload a sharded object's state is
replaced by a marker ``{"__distengine_sharded__": key}``; ``payload["__distengine__"]
["sharded"]`` records each key's kind and the save's metadata (which chunk of which tensor
lies where, in plain data). ``docs/checkpoints.md`` has the protocol.

**Loading** (:func:`load_deferred`) builds each object's own state (DTensors for a sharded
model, on this rank's shards), has DCP fill it from the files (only the chunks this rank
needs, each chunk checked against its own digest — XXH3-128, see
``distengine/distributed/dcp_storage.py`` — which the payload records and the manifest
vouches for), and loads it into the object:
a checkpoint saved at world size N loads at world size M, into sharded or whole models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from distengine.checkpoint.content import (
    RESERVED_KEY,
    SHARDED_MARKER,
    has_rank_state,
    rank_state_only,
    unwrap_model,
)
from distengine.checkpoint.errors import CheckpointIntegrityError
from distengine.checkpoint.manifest import FileEntry, Manifest
from distengine.checkpoint.storage import Storage
from distengine.distributed import sharded as dsh

__all__ = [
    "FORMAT_VERSION",
    "Part",
    "apply_part",
    "description",
    "files_of",
    "find_parts",
    "load_deferred",
    "markers",
    "part_state",
    "shard_names",
]

FORMAT_VERSION = 1
_KINDS = ("model", "optimizer", "state")


@dataclass(frozen=True)
class Part:
    """One object saved as sharded state.

    Attributes:
        key: its name in the sharded files: its path in ``to_save`` (``"model"``,
            ``"models/1"``).
        obj: the object, as given.
        kind: ``"model"``, ``"optimizer"`` or ``"state"`` (any other object).
        model: for an optimizer, the model it optimizes (unwrapped).
    """

    key: str
    obj: Any
    kind: str
    model: Any = None


def shard_names(payload_name: str, world_size: int) -> list[str]:
    """The per-rank files of a sharded checkpoint whose payload is ``payload_name``.

    Example:
        >>> shard_names("checkpoint_10.pt", 2)
        ['checkpoint_10.pt.rank0.distcp', 'checkpoint_10.pt.rank1.distcp']
    """
    return [f"{payload_name}.rank{r}.distcp" for r in range(world_size)]


def _leaves(tree: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """``(path, object)`` of every object of a ``to_save``/``to_load`` tree."""
    if hasattr(tree, "state_dict") or hasattr(tree, "load_state_dict") or has_rank_state(tree):
        yield path, tree
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _leaves(v, (*path, i))
    elif isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _leaves(v, (*path, k))


def _key(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def _models(tree: Any) -> list[nn.Module]:
    return [m for _, obj in _leaves(tree) if isinstance(m := unwrap_model(obj), nn.Module)]


def _model_of(optimizer: torch.optim.Optimizer, models: list[nn.Module]) -> nn.Module | None:
    wanted = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for m in models:
        if wanted <= {id(p) for p in m.parameters()}:
            return m
    return None


def _optimizer_part(key: str, obj: Any, models: list[nn.Module], where: str) -> Part:
    model = _model_of(obj, models)
    if model is None:
        raise ValueError(
            f"{where}[{key!r}] is the optimizer of a sharded model, whose state is saved and "
            f"loaded by parameter name: put that model in {where} too (no model there holds "
            "all of its parameters)"
        )
    return Part(key, obj, "optimizer", model)


def find_parts(to_save: Mapping[str, Any], sharded: bool = False) -> list[Part]:
    """The objects of ``to_save`` saved as sharded state (see the module docstring).

    Raises:
        ValueError: a sharded optimizer whose model is not in ``to_save``.

    Example:
        >>> find_parts({"model": nn.Linear(1, 1)})
        []
        >>> [p.key for p in find_parts({"model": nn.Linear(1, 1)}, sharded=True)]
        ['model']
    """
    leaves = list(_leaves(to_save))
    models = _models(to_save)
    for m in models:
        dsh.reshard(m)  # after an evaluation the root's gathered parameters are registered
    parts: list[Part] = []
    for path, obj in leaves:
        if rank_state_only(obj):
            continue
        target, key = unwrap_model(obj), _key(path)
        if isinstance(target, nn.Module):
            if sharded or dsh.module_is_sharded(target):
                parts.append(Part(key, obj, "model"))
        elif isinstance(target, torch.optim.Optimizer):
            if sharded or dsh.optimizer_is_sharded(target):
                parts.append(_optimizer_part(key, target, models, "to_save"))
        elif dsh.dtensors_in_use() and dsh.holds_dtensor(target.state_dict()):
            parts.append(Part(key, obj, "state"))
    return parts


def markers(parts: list[Part]) -> dict[int, Any]:
    """``{id(object): marker}`` for ``tree_state_dict``'s ``replace``."""
    return {id(p.obj): {SHARDED_MARKER: p.key} for p in parts}


def description(parts: list[Part]) -> dict[str, Any]:
    """What the payload records of the sharded state (its metadata is added once written)."""
    return {
        "format_version": FORMAT_VERSION,
        "objects": {p.key: p.kind for p in parts},
        "metadata": None,
    }


def part_state(part: Part) -> Any:
    """The object's state as DCP saves and loads it: DTensors for sharded tensors, an
    optimizer's state keyed by parameter names."""
    if part.kind == "model":
        return dsh.model_state(unwrap_model(part.obj))
    if part.kind == "optimizer":
        return dsh.optimizer_state(part.model, part.obj)
    return part.obj.state_dict()


def apply_part(part: Part, state: Any, strict: bool) -> None:
    """Loads ``state`` (filled by DCP) into the object."""
    if part.kind == "model":
        dsh.apply_model_state(unwrap_model(part.obj), state, strict)
    elif part.kind == "optimizer":
        dsh.apply_optimizer_state(part.model, part.obj, state)
    else:
        part.obj.load_state_dict(state)


def files_of(metadata: Mapping[str, Any]) -> dict[str, FileEntry]:
    """The per-rank files a save wrote, with their size and SHA-256 (from its metadata)."""
    return {name: FileEntry(int(size), str(sha)) for name, (size, sha) in metadata["files"].items()}


# --- loading ----------------------------------------------------------------------------------


def _deferred_part(obj: Any, key: str, kind: Any, models: list[nn.Module], path: str) -> Part:
    target = unwrap_model(obj)
    if kind == "model":
        if not isinstance(target, nn.Module):
            raise TypeError(
                f"{path}: the checkpoint holds a model's state, got {type(obj).__name__}"
            )
        return Part(key, obj, "model")
    if kind == "optimizer":
        if not isinstance(target, torch.optim.Optimizer):
            raise TypeError(
                f"{path}: the checkpoint holds an optimizer's state, got {type(obj).__name__}"
            )
        return _optimizer_part(key, target, models, "to_load")
    if kind == "state":
        return Part(key, obj, "state")
    raise CheckpointIntegrityError(f"{path}: unknown kind of sharded state {kind!r}")


def load_deferred(
    to_load: Mapping[str, Any],
    deferred: list[tuple[Any, str, str]],
    payload: Mapping[str, Any],
    storage: Storage | None,
    manifest: Manifest | None,
    strict: bool,
) -> None:
    """Loads the objects whose state is in the per-rank files; a collective at world size > 1.

    Args:
        to_load: all objects being loaded (an optimizer's model is looked up there).
        deferred: ``(object, key, path)`` of each object whose payload entry is a marker.
        payload: the checkpoint's payload.
        storage: the checkpoint's directory; ``None`` when the payload was given as a
            mapping (then this raises).
        manifest: the checkpoint's manifest: every file is verified against it before it
            is read (``None``: files read unverified, the payload had no manifest either).
        strict: refuse model entries of the checkpoint that the model does not have.

    Raises:
        ValueError: the payload was given as a mapping, or objects and checkpoint do not
            match (missing entries, a sharded optimizer without its model).
        CheckpointIntegrityError: a file is missing, damaged or not in the manifest.
    """
    if storage is None:
        raise ValueError(
            f"{[p for _, _, p in deferred]} are sharded state, stored in files next to the "
            "checkpoint's payload: pass the checkpoint's path or URL to load_objects, not a "
            "loaded mapping"
        )
    meta = payload.get(RESERVED_KEY, {}).get("sharded")
    if not isinstance(meta, Mapping) or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointIntegrityError(
            f"{storage.url}: the payload has sharded markers but no readable description of "
            f"the sharded state (expected format {FORMAT_VERSION})"
        )
    kinds, metadata = meta.get("objects", {}), meta.get("metadata")
    models = _models(to_load)
    for m in models:
        dsh.reshard(m)
    parts = [_deferred_part(obj, key, kinds.get(key), models, path) for obj, key, path in deferred]
    try:
        written = files_of(metadata)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointIntegrityError(
            f"{storage.url}: damaged sharded-state metadata in the payload: {e}"
        ) from None
    read_file = _reader(storage, manifest, written)
    targets = {p.key: part_state(p) for p in parts}
    dsh.load_state(targets, metadata, read_file, strict=strict, group=dsh.io_group())
    for p in parts:
        apply_part(p, targets[p.key], strict)


def _reader(
    storage: Storage, manifest: Manifest | None, written: dict[str, FileEntry]
) -> Callable[[str, list[tuple[int, int, Any, Any]], Callable[[int, memoryview], None]], None]:
    """``read_file(name, spans, on_span)`` for the DCP reader: ranged reads of a file of the
    checkpoint, each span checked against its digest (an ``ItemDigest`` recorded in the
    payload, which the manifest vouches for) before it is handed over."""
    if manifest is not None:
        for name, entry in written.items():
            if manifest.files.get(name) != entry:
                raise CheckpointIntegrityError(
                    f"{storage.url_of(name)}: the payload lists it (size {entry.size}, "
                    f"SHA-256 {entry.sha256}), its manifest "
                    + (
                        f"says {manifest.files[name]}"
                        if name in manifest.files
                        else "does not list it"
                    )
                )

    def read_file(
        name: str,
        spans: list[tuple[int, int, Any, Any]],
        on_span: Callable[[int, memoryview], None],
    ) -> None:
        if name not in written:
            raise CheckpointIntegrityError(
                f"{storage.url_of(name)}: not a file of this checkpoint (metadata damaged)"
            )

        def check(i: int, view: memoryview) -> None:
            start, length, expected, _ = spans[i]
            got = expected.of(view)  # an ItemDigest (XXH3-128: ~10 GB/s, inline)
            if got != expected.hexdigest:
                raise CheckpointIntegrityError(
                    f"{storage.url_of(name)}: {expected.algorithm} mismatch in bytes "
                    f"{start}-{start + length} (the payload says {expected.hexdigest}, the "
                    f"content is {got})"
                )
            on_span(i, view)

        try:
            storage.read_ranges(name, [(start, n, into) for start, n, _, into in spans], check)
        except FileNotFoundError:
            raise CheckpointIntegrityError(f"{storage.url_of(name)}: missing") from None

    return read_file
