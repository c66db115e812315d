"""Contract 1: checkpoint storage must be readable by every rank (every node).

A directory on a node-local disk (or a per-process ``memory://``) silently breaks a
multi-node job: rank 0 writes checkpoints that the other nodes never see, and a restart
resumes them from different places. So, once per directory and process, the first
checkpoint operation checks it: rank 0 writes a small probe file, every rank looks for it,
and a rank that cannot see it makes every rank raise a clear error.
"""

from __future__ import annotations

import socket
import uuid

from distengine import distributed as idist
from distengine.checkpoint.collective import broadcast_from, gather_to_all
from distengine.checkpoint.errors import CheckpointError
from distengine.checkpoint.storage import Storage

__all__ = ["ensure_shared"]

_checked: set[tuple[str, str]] = set()


def ensure_shared(storage: Storage, create: bool = True) -> None:
    """Raises :class:`CheckpointError` on every rank unless every rank sees ``storage``.

    A collective at world size > 1 (the first time per directory); free afterwards and at
    world size 1.

    Example:
        >>> ensure_shared(Storage("memory://doc-shared"))  # one process: nothing to check
    """
    key = (storage.protocol, storage.url)
    if idist.get_world_size() == 1 or key in _checked:
        return
    probe, problem = None, None
    if idist.get_rank() == 0:
        probe = f".distengine-shared-{uuid.uuid4().hex}"
        try:
            storage.ensure_dir(create=create)
            # not through the checkpoint writer, whose fault points it must not hit
            storage.write_marker(probe, b"distengine shared-storage probe\n")
        except Exception as e:
            problem = (
                f"rank 0 cannot write a probe file to {storage.url!r}: {type(e).__name__}: {e}"
            )
    probe, problem = broadcast_from((probe, problem), src=0)
    if problem is not None:
        raise CheckpointError(problem)
    try:
        seen = storage.exists(probe)
    except Exception:
        seen = False
    views = gather_to_all((seen, socket.gethostname()))
    if idist.get_rank() == 0:
        storage.remove(probe)
    blind = [(rank, host) for rank, (ok, host) in enumerate(views) if not ok]
    if blind:
        where = ", ".join(f"rank {r} on {h}" for r, h in blind)
        raise CheckpointError(
            f"Checkpoint storage {storage.url!r} is not shared by all ranks: {where} cannot see "
            "a file rank 0 just wrote there. Multi-node runs need storage every node can read: "
            "a shared file system or object storage (e.g. s3://), not a node-local disk or memory://"
        )
    _checked.add(key)
