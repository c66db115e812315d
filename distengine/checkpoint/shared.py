"""Contract 1: checkpoint storage must be readable by every rank (every node).

A directory on a node-local disk (or a per-process ``memory://``) silently breaks a
multi-node job: the writing rank writes checkpoints that the other nodes never see, and a
restart resumes them from different places. So the first save of each checkpoint handler
checks it: the writing rank writes a small probe file, every rank looks for it, and a rank
that cannot see it makes every rank raise a clear error.
"""

from __future__ import annotations

import socket
import uuid
import warnings

from distengine import distributed as idist
from distengine.checkpoint.coordination import broadcast_from, gather_to_all
from distengine.checkpoint.errors import CheckpointError
from distengine.checkpoint.storage import Storage

__all__ = ["ensure_shared"]


def ensure_shared(storage: Storage, create: bool = True, src: int = 0) -> None:
    """Raises :class:`CheckpointError` on every rank unless every rank sees the directory
    rank ``src`` (the writing rank) writes to.

    A collective at world size > 1 (free at world size 1): call it on every rank, once per
    checkpoint handler (:class:`~distengine.checkpoint.protocol.DirectoryTarget` does, at
    its first save). The writing rank's directory is the one checked: a rank whose own
    save handler names another directory (Ignite's examples give rank 0 alone a
    per-run sub-folder) checks the writer's directory with its own storage options, and
    warns that checkpoints go there.

    Example:
        >>> ensure_shared(Storage("memory://doc-shared"))  # one process: nothing to check
    """
    if idist.get_world_size() == 1:
        return
    probe, problem = None, None
    rank = idist.get_rank()
    if rank == src:
        probe = f".distengine-shared-{uuid.uuid4().hex}"
        try:
            storage.ensure_dir(create=create)
            # not through the checkpoint writer, whose fault points it must not hit
            storage.write_marker(probe, b"distengine shared-storage probe\n")
        except Exception as e:
            problem = (
                f"rank {src} cannot write a probe file to {storage.url!r}: {type(e).__name__}: {e}"
            )
    probe, problem, written = broadcast_from(
        (probe, problem, (storage.protocol, storage.url)), src=src
    )
    if problem is not None:
        raise CheckpointError(problem)
    target = storage
    if (storage.protocol, storage.url) != written:
        warnings.warn(
            f"This rank's checkpoint directory {storage.url!r} differs from {written[1]!r}, "
            f"where rank {src} writes the checkpoints (the directory of the writing rank is "
            "the one used)",
            UserWarning,
            stacklevel=4,
        )
        try:
            target = Storage(written[1], io_timeout=storage.io_timeout, **storage.storage_options)
        except Exception:
            target = None
    try:
        seen = target is not None and target.exists(probe)
    except Exception:
        seen = False
    views = gather_to_all((seen, socket.gethostname()))
    if rank == src:
        storage.remove(probe)
    blind = [(r, host) for r, (ok, host) in enumerate(views) if not ok]
    if blind:
        where = ", ".join(f"rank {r} on {h}" for r, h in blind)
        raise CheckpointError(
            f"Checkpoint storage {written[1]!r} is not shared by all ranks: {where} cannot see "
            f"a file rank {src} just wrote there. Multi-node runs need storage every node can "
            "read: a shared file system or object storage (e.g. s3://), not a node-local disk "
            "or memory://"
        )
