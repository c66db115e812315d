"""Reading a checkpoint payload (verified against its manifest) and restoring objects,
sharded ones included (their files are read by every rank together)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from distengine import distributed as idist
from distengine.checkpoint.catalog import load_manifest
from distengine.checkpoint.content import RESERVED_KEY, apply_tree, check_objects, rank_state_only
from distengine.checkpoint.coordination import gather_to_all, handshake
from distengine.checkpoint.deadline import Progress, call_with_progress
from distengine.checkpoint.errors import CheckpointError, CheckpointIntegrityError
from distengine.checkpoint.manifest import Manifest, manifest_candidates, manifest_name
from distengine.checkpoint.sharded import load_deferred
from distengine.checkpoint.storage import CountingReader, Storage

__all__ = ["load_objects", "read_payload", "split_url"]


def split_url(url: str) -> tuple[str, str]:
    """``"s3://b/run/c_1.pt"`` -> ``("s3://b/run", "c_1.pt")``; local paths alike.

    Example:
        >>> split_url("memory://run/checkpoint_3.pt")
        ('memory://run', 'checkpoint_3.pt')
    """
    if "://" in url:
        head, _, name = url.rstrip("/").rpartition("/")
        if "://" not in head or head.endswith(":/"):
            raise ValueError(f"Expected a file URL such as 's3://bucket/dir/file.pt', got {url!r}")
        return head, name
    head, name = os.path.split(os.path.abspath(os.path.expanduser(url)))
    return head, name


@dataclass
class _Source:
    """A checkpoint to read: its directory, payload file name and manifest (if any)."""

    storage: Storage
    name: str
    manifest: Manifest | None

    @property
    def sharded(self) -> bool:
        """Whether its manifest lists per-rank files besides the payload."""
        return self.manifest is not None and len(self.manifest.files) > 1


def _open_source(url: str, io_timeout: float | None, storage_options: dict) -> _Source:
    directory, name = split_url(url)
    storage = Storage(directory, io_timeout=io_timeout, **storage_options)
    found = next((m for m in manifest_candidates(name) if storage.exists(m)), None)
    if found is None:
        return _Source(storage, name, None)
    try:
        return _Source(storage, name, load_manifest(storage, found))
    except ValueError as e:
        raise CheckpointIntegrityError(str(e)) from None


def _read(source: _Source, map_location: Any) -> Any:
    storage, name, manifest = source.storage, source.name, source.manifest
    if manifest is None:
        warnings.warn(
            f"{storage.url_of(name)} has no manifest ({manifest_name(name)}): loading it unverified",
            RuntimeWarning,
            stacklevel=3,
        )
        f = storage.open_read(name)
    else:
        f = storage.open_verified(name, size=manifest.size, sha256=manifest.sha256)
    progress = Progress()
    with f:
        try:
            return call_with_progress(
                lambda: torch.load(
                    CountingReader(f, progress), map_location=map_location, weights_only=True
                ),
                progress,
                storage.io_timeout,
                f"loading {storage.url_of(name)}",
            )
        except (OSError, TimeoutError):
            raise
        except Exception as e:
            raise CheckpointIntegrityError(f"{storage.url_of(name)}: cannot be loaded: {e}") from e


def read_payload(
    url: str | os.PathLike,
    map_location: Any = None,
    io_timeout: float | None = None,
    **storage_options: Any,
) -> Any:
    """Loads a checkpoint payload after checking it against its manifest.

    The manifest is checked as ``Checkpoint.latest`` checks it (size cap, checksum,
    fields, bound to this payload), then the payload's size and SHA-256. A payload
    without a manifest (e.g. written by Ignite or by ``torch.save``) is loaded with a
    warning that it was not verified. The payload of a sharded checkpoint holds markers
    where the sharded objects' state would be (their state is in the per-rank files).

    Args:
        url: the payload's path or URL (what ``Checkpoint.latest`` returns).
        map_location: passed to ``torch.load``.
        io_timeout: seconds after which a stalled read fails (default
            ``DISTENGINE_STORAGE_TIMEOUT`` or 120).
        **storage_options: passed to the fsspec filesystem.

    Raises:
        CheckpointIntegrityError: the manifest or the payload does not check out, or the
            payload does not load.
        FileNotFoundError: there is no such payload.

    Example:
        >>> from distengine.handlers import Checkpoint
        >>> handler = Checkpoint({"model": model}, "ckpt")
        >>> handler(trainer)
        >>> sd = read_payload(handler.last_checkpoint, map_location="cpu")  # checked, then loaded
        >>> sorted(sd)  # one object: its state dict itself, as in Ignite
        ['bias', 'weight']
    """
    if not isinstance(url, (str, os.PathLike)):
        raise TypeError(f"Expected a checkpoint path or URL (str), got {type(url).__name__}")
    return _read(_open_source(os.fspath(url), io_timeout, storage_options), map_location)


def load_objects(
    to_load: Mapping[str, Any],
    checkpoint: str | os.PathLike | Mapping[str, Any],
    strict: bool = True,
    map_location: Any = None,
    io_timeout: float | None = None,
    **storage_options: Any,
) -> None:
    """Restores each object of ``to_load`` from ``checkpoint``; see ``Checkpoint.load_objects``.

    A sharded checkpoint (per-rank files besides the payload) is loaded by every rank
    together at world size > 1: the ranks first check that all entered the load and all
    read the payload, then read their shards (a collective).
    """
    if not isinstance(checkpoint, (str, os.PathLike, Mapping)):
        raise TypeError(
            "Argument checkpoint should be a string or a dictionary (a path/URL, or a mapping "
            f"already loaded), but given {type(checkpoint).__name__}"
        )
    if not isinstance(to_load, Mapping):
        raise TypeError(
            f"Argument to_load should be a mapping of objects, got {type(to_load).__name__}"
        )
    check_objects(to_load, "load_state_dict", "to_load")
    source: _Source | None = None
    if isinstance(checkpoint, Mapping):
        payload = checkpoint
    else:
        source = _open_source(os.fspath(checkpoint), io_timeout, storage_options)
        payload = _read_agreed(source, map_location)
    if not isinstance(payload, Mapping):
        raise TypeError(f"Expected the checkpoint to hold a mapping, got {type(payload).__name__}")
    meta = payload.get(RESERVED_KEY)
    if len(to_load) == 1 and meta is None:
        # A checkpoint of a single object holds that object's state_dict directly (Ignite).
        key, obj = next(iter(to_load.items()))
        if key not in payload:
            apply_tree(obj, payload, strict, f"to_load[{key!r}]")
            return
    rank_states: Mapping[str, list] = meta["rank_states"] if meta is not None else {}
    missing = [k for k in to_load if k not in payload and k not in rank_states]
    if missing and strict:
        present = sorted(k for k in payload if k != RESERVED_KEY)
        raise ValueError(
            f"Key {missing[0]!r} from to_load is not found in the checkpoint, which holds "
            f"{present} (missing: {missing}; strict=True)"
        )
    deferred: list = []
    for key, obj in to_load.items():
        if key in payload and not rank_state_only(obj):
            apply_tree(obj, payload[key], strict, f"to_load[{key!r}]", deferred)
    if deferred:
        load_deferred(
            to_load,
            deferred,
            payload,
            source.storage if source is not None else None,
            source.manifest if source is not None else None,
            strict,
        )
    if rank_states:
        _load_rank_states(to_load, rank_states, int(meta["world_size"]))


def _read_agreed(source: _Source, map_location: Any) -> Any:
    """Reads the payload; for a sharded checkpoint at world size > 1, every rank first
    checks that all ranks entered the load (bounded) and then learns whether every rank
    read the payload, so that no rank enters the shard reads alone."""
    if not source.sharded or idist.get_world_size() == 1:
        return _read(source, map_location)
    handshake("load")
    payload, error = None, None
    try:
        payload = _read(source, map_location)
    except Exception as e:
        error = e
    problems = gather_to_all(
        None if error is None else (isinstance(error, CheckpointIntegrityError), f"{error}"),
        what="checkpoint load",
    )
    failed = [(r, p) for r, p in enumerate(problems) if p is not None]
    if error is not None:
        raise error
    if failed:
        rank, (integrity, message) = failed[0]
        kind = CheckpointIntegrityError if integrity else CheckpointError
        raise kind(f"rank {rank} could not read the checkpoint: {message}")
    return payload


def _load_rank_states(
    to_load: Mapping[str, Any], rank_states: Mapping[str, list], saved_world: int
) -> None:
    keys = [
        k
        for k, obj in to_load.items()
        if k in rank_states and callable(getattr(obj, "load_rank_state_dict", None))
    ]
    if not keys:
        return
    world = idist.get_world_size()
    if world != saved_world:
        # Per-rank state (RNG streams, metric accumulators) has no meaning for a rank that
        # did not exist, or that now reads other samples: the global state is restored,
        # these are not, and the run is then equal to float tolerance, not bitwise.
        warnings.warn(
            f"Checkpoint saved with world size {saved_world}, loading at world size {world}: "
            f"the per-rank state of {keys} (RNG states, metric accumulators) is not restored",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    rank = idist.get_rank()
    for key in keys:
        to_load[key].load_rank_state_dict(rank_states[key][rank])
