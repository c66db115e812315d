"""The manifest: the small JSON file that makes a checkpoint exist.

A checkpoint is ``{stem}.pt`` (the payload) plus ``{stem}.manifest.json``, written after
the payload is committed. The manifest records what a reader needs to trust the payload
(its size and SHA-256) and what ``latest`` and retention need without opening it (save
sequence number, iteration, epoch, world size, filename prefix, whether it holds an
engine, the handler's basename and the priority used for ``n_saved``).

Example of a manifest::

    {"format_version": 1, "sequence": 7, "iteration": 700, "epoch": 2,
     "world_size": 2, "filename_prefix": "", "holds_engine": true,
     "basename": "checkpoint", "score_name": null, "priority": 700,
     "payload": "checkpoint_700.pt",
     "files": {"checkpoint_700.pt": {"size": 1234, "sha256": "9f86…"}},
     "created_unix": 1760000000.0}
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["FORMAT_VERSION", "MANIFEST_SUFFIX", "Manifest", "manifest_name"]

FORMAT_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"


def manifest_name(payload_name: str) -> str:
    """``"checkpoint_10.pt"`` -> ``"checkpoint_10.manifest.json"``.

    Example:
        >>> manifest_name("best_model_3_acc=0.9100.pt")
        'best_model_3_acc=0.9100.manifest.json'
    """
    stem, _ = os.path.splitext(payload_name)
    return stem + MANIFEST_SUFFIX


@dataclass
class Manifest:
    """What a manifest holds; see the module docstring for the JSON form.

    Example:
        >>> m = Manifest(payload="c_1.pt", size=3, sha256="ab", sequence=1, iteration=1,
        ...              epoch=1, world_size=1, filename_prefix="", holds_engine=False,
        ...              basename="c", score_name=None, priority=1)
        >>> Manifest.from_json(m.to_json()) == m
        True
    """

    payload: str
    size: int
    sha256: str
    sequence: int
    iteration: int | None
    epoch: int | None
    world_size: int
    filename_prefix: str
    holds_engine: bool
    basename: str
    score_name: str | None
    priority: float
    format_version: int = FORMAT_VERSION
    created_unix: float = field(default_factory=time.time)

    def to_json(self) -> bytes:
        """Serializes to UTF-8 JSON bytes."""
        d = asdict(self)
        size, sha = d.pop("size"), d.pop("sha256")
        d["files"] = {self.payload: {"size": size, "sha256": sha}}
        return json.dumps(d, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parses and validates manifest bytes.

        Raises:
            ValueError: if the bytes are not a complete manifest of a known format version.
        """
        try:
            d: dict[str, Any] = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"expected format_version {FORMAT_VERSION}, got {version!r}")
        try:
            payload = d["payload"]
            entry = d["files"][payload]
            return cls(
                payload=str(payload),
                size=int(entry["size"]),
                sha256=str(entry["sha256"]),
                sequence=int(d["sequence"]),
                iteration=_opt_int(d["iteration"]),
                epoch=_opt_int(d["epoch"]),
                world_size=int(d["world_size"]),
                filename_prefix=str(d["filename_prefix"]),
                holds_engine=bool(d["holds_engine"]),
                basename=str(d["basename"]),
                score_name=None if d["score_name"] is None else str(d["score_name"]),
                priority=d["priority"],
                format_version=int(version),
                created_unix=float(d.get("created_unix", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"incomplete manifest: {type(e).__name__}: {e}") from None


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)
