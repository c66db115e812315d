"""The manifest: the small JSON file that makes a checkpoint exist.

A checkpoint is one or more files plus ``{payload}.manifest.json``, committed after every
file it lists is durable. The manifest records what a reader needs to trust the files
(size and SHA-256 of each), what ``latest`` and retention need without opening them, who
wrote it (run, handler, writer session) and a checksum of its own content.

Example of a manifest (format 2)::

    {"checksum": "sha256:4f1c…", "format_version": 2,
     "name": "checkpoint_700.pt", "payload": "checkpoint_700.pt",
     "files": {"checkpoint_700.pt": {"sha256": "9f86…", "size": 1234}},
     "sequence": 7, "iteration": 700, "epoch": 2, "world_size": 2,
     "run_id": "5c0ffee5deadbeef", "handler": "a1b2c3d4e5f6", "session": "0f1e2d3c4b5a6978",
     "session_first": 3, "session_base": 2,
     "filename_prefix": "", "holds_engine": true, "basename": "checkpoint",
     "score_name": null, "priority": 700, "created_unix": 1760000000.0}

``name`` is the file name the handler asked for; ``payload`` is the file that holds it,
usually the same name, another one when that name was still in use by a committed
checkpoint (see ``docs/checkpoints.md``). A manifest is bound to its payload: its own
file name must be :func:`manifest_name` of ``payload``. Parsing is strict: a manifest with
a wrong checksum, a field of the wrong type, ``NaN``/``Infinity`` literals or more than
:data:`MAX_MANIFEST_BYTES` bytes is refused with a ``ValueError`` naming the problem.
Format 1 manifests (no checksum, no identity) are still read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_SUFFIX",
    "MAX_MANIFEST_BYTES",
    "FileEntry",
    "Manifest",
    "check_file_name",
    "manifest_candidates",
    "manifest_name",
]

FORMAT_VERSION = 2
MANIFEST_SUFFIX = ".manifest.json"
# A manifest lists a few files (one per rank for sharded checkpoints): far below this.
MAX_MANIFEST_BYTES = 4 << 20

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TOKEN = re.compile(r"^[0-9a-zA-Z_-]{1,64}$")
_MAX_INT = 2**63 - 1


def manifest_name(payload_name: str) -> str:
    """``"checkpoint_10.pt"`` -> ``"checkpoint_10.pt.manifest.json"``.

    The whole payload name is kept, so two payloads never share a manifest (names
    without an extension, such as ``"model_0.9100"``, would otherwise collide).

    Example:
        >>> manifest_name("best_model_3_acc=0.9100.pt")
        'best_model_3_acc=0.9100.pt.manifest.json'
    """
    return payload_name + MANIFEST_SUFFIX


def manifest_candidates(payload_name: str) -> list[str]:
    """Where the manifest of ``payload_name`` may be: the current name, then format 1's
    (``"checkpoint_10.manifest.json"``), still read.

    Example:
        >>> manifest_candidates("c_1.pt")
        ['c_1.pt.manifest.json', 'c_1.manifest.json']
    """
    return [manifest_name(payload_name), _v1_manifest_name(payload_name)]


def _v1_manifest_name(payload_name: str) -> str:
    stem, _ = os.path.splitext(payload_name)
    return stem + MANIFEST_SUFFIX


def check_file_name(name: Any, what: str = "file name") -> str:
    """Returns ``name`` if it is a plain file name in a directory, else raises ``ValueError``.

    Example:
        >>> check_file_name("../x.pt")
        Traceback (most recent call last):
        ...
        ValueError: expected a plain file name (no '/', '\\\\', NUL, '.' or '..'), got '../x.pt'
    """
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or any(c in name for c in "/\\\0")
        or len(name.encode()) > 255
    ):
        raise ValueError(
            f"expected a plain file name (no '/', '\\\\', NUL, '.' or '..'), got {name!r}"
        )
    if name.endswith(MANIFEST_SUFFIX):
        raise ValueError(f"{what} {name!r} ends with {MANIFEST_SUFFIX!r}, reserved for manifests")
    return name


@dataclass(frozen=True)
class FileEntry:
    """Size and SHA-256 of one file of a checkpoint."""

    size: int
    sha256: str


@dataclass
class Manifest:
    """What a manifest holds; see the module docstring for the JSON form.

    Example:
        >>> m = Manifest(name="c_1.pt", payload="c_1.pt",
        ...              files={"c_1.pt": FileEntry(3, "ab" * 32)}, sequence=1)
        >>> Manifest.from_json(m.to_json(), file_name="c_1.pt.manifest.json") == m
        True
    """

    name: str
    payload: str
    files: dict[str, FileEntry]
    sequence: int
    iteration: int | None = None
    epoch: int | None = None
    world_size: int = 1
    run_id: str | None = None
    handler: str | None = None
    session: str | None = None
    session_first: int | None = None
    session_base: int | None = None
    filename_prefix: str = ""
    holds_engine: bool = False
    basename: str = ""
    score_name: str | None = None
    priority: float = 0
    format_version: int = FORMAT_VERSION
    created_unix: float = field(default_factory=time.time)

    @property
    def size(self) -> int:
        """Size of the payload file."""
        return self.files[self.payload].size

    @property
    def sha256(self) -> str:
        """SHA-256 of the payload file."""
        return self.files[self.payload].sha256

    def with_payload(self, payload: str) -> Manifest:
        """The same checkpoint described as stored under another payload file name."""
        entry = self.files[self.payload]
        files = {n: e for n, e in self.files.items() if n != self.payload}
        files[payload] = entry
        return replace(self, payload=payload, files=files)

    def to_json(self) -> bytes:
        """Serializes to UTF-8 JSON bytes, with the checksum of the content."""
        d = _content(self)
        d["checksum"] = "sha256:" + _digest(d)
        return json.dumps(d, indent=1, sort_keys=True, allow_nan=False).encode()

    @classmethod
    def from_json(cls, data: bytes, *, file_name: str | None = None) -> Manifest:
        """Parses and validates manifest bytes.

        Args:
            data: the manifest file's content.
            file_name: the manifest's own file name; if given, it must be the
                :func:`manifest_name` of the payload it describes.

        Raises:
            ValueError: the bytes are not a complete, intact manifest of a known format
                version (the message says which field is wrong).
        """
        if len(data) > MAX_MANIFEST_BYTES:
            raise ValueError(f"larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            d = json.loads(data, parse_constant=_refuse_constant)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        version = d.get("format_version")
        if version == 1 and not isinstance(version, bool):
            m = _from_v1(d)
        elif version == FORMAT_VERSION and not isinstance(version, bool):
            m = _from_v2(d)
        else:
            raise ValueError(f"expected format_version 1 or {FORMAT_VERSION}, got {version!r}")
        bound = manifest_name(m.payload) if m.format_version > 1 else _v1_manifest_name(m.payload)
        if file_name is not None and file_name != bound:
            raise ValueError(
                f"describes payload {m.payload!r}, whose manifest would be {bound!r}, "
                f"not {file_name!r} (swapped or renamed manifest)"
            )
        return m


def _refuse_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a valid JSON number")


def _content(m: Manifest) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "name": m.name,
        "payload": m.payload,
        "files": {n: {"size": e.size, "sha256": e.sha256} for n, e in m.files.items()},
        "sequence": m.sequence,
        "iteration": m.iteration,
        "epoch": m.epoch,
        "world_size": m.world_size,
        "run_id": m.run_id,
        "handler": m.handler,
        "session": m.session,
        "session_first": m.session_first,
        "session_base": m.session_base,
        "filename_prefix": m.filename_prefix,
        "holds_engine": m.holds_engine,
        "basename": m.basename,
        "score_name": m.score_name,
        "priority": encode_priority(m.priority),
        "created_unix": m.created_unix,
    }


def _digest(d: dict[str, Any]) -> str:
    canonical = json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def encode_priority(p: float) -> float | str:
    """A priority as JSON allows it: numbers as they are, ``"nan"``/``"inf"``/``"-inf"``.

    Example:
        >>> encode_priority(float("nan")), encode_priority(3)
        ('nan', 3)
    """
    if isinstance(p, float) and not math.isfinite(p):
        return "nan" if math.isnan(p) else ("inf" if p > 0 else "-inf")
    return p


def _priority(v: Any) -> float:
    if v in ("nan", "inf", "-inf"):
        return float(v)
    return _number(v, "priority")


def _from_v2(d: dict[str, Any]) -> Manifest:
    expected = set(_content(Manifest("x", "x", {"x": FileEntry(0, "0" * 64)}, 1))) | {"checksum"}
    missing = sorted(expected - set(d))
    if missing:
        raise ValueError(f"missing fields {missing}")
    claimed = d["checksum"]
    body = {k: v for k, v in d.items() if k != "checksum"}
    if not isinstance(claimed, str) or claimed != "sha256:" + _digest(body):
        raise ValueError("checksum mismatch: the manifest was altered or damaged")
    files = _files(d["files"])
    payload = _name(d["payload"], "payload")
    if payload not in files:
        raise ValueError(f"field 'files' does not list the payload {payload!r}")
    return Manifest(
        name=_name(d["name"], "name"),
        payload=payload,
        files=files,
        sequence=_int(d["sequence"], "sequence", 0),
        iteration=_opt_int(d["iteration"], "iteration", 0),
        epoch=_opt_int(d["epoch"], "epoch", 0),
        world_size=_int(d["world_size"], "world_size", 1),
        run_id=_opt_token(d["run_id"], "run_id"),
        handler=_opt_token(d["handler"], "handler"),
        session=_opt_token(d["session"], "session"),
        session_first=_opt_int(d["session_first"], "session_first", 0),
        session_base=_opt_int(d["session_base"], "session_base", 0),
        filename_prefix=_str(d["filename_prefix"], "filename_prefix"),
        holds_engine=_bool(d["holds_engine"], "holds_engine"),
        basename=_str(d["basename"], "basename"),
        score_name=None if d["score_name"] is None else _str(d["score_name"], "score_name"),
        priority=_priority(d["priority"]),
        format_version=FORMAT_VERSION,
        created_unix=_number(d["created_unix"], "created_unix"),
    )


def _from_v1(d: dict[str, Any]) -> Manifest:
    """Format 1 (no checksum, no identity): read as a checkpoint no handler owns."""
    try:
        payload = _name(d["payload"], "payload")
        files = _files({payload: d["files"][payload]})
        return Manifest(
            name=payload,
            payload=payload,
            files=files,
            sequence=_int(d["sequence"], "sequence", 0),
            iteration=_opt_int(d["iteration"], "iteration", 0),
            epoch=_opt_int(d["epoch"], "epoch", 0),
            world_size=_int(d["world_size"], "world_size", 1),
            filename_prefix=_str(d["filename_prefix"], "filename_prefix"),
            holds_engine=_bool(d["holds_engine"], "holds_engine"),
            basename=_str(d["basename"], "basename"),
            score_name=None if d["score_name"] is None else _str(d["score_name"], "score_name"),
            priority=_priority(d["priority"]),
            format_version=1,
            created_unix=_number(d.get("created_unix", 0.0), "created_unix"),
        )
    except (KeyError, TypeError) as e:
        raise ValueError(f"incomplete format 1 manifest: {type(e).__name__}: {e}") from None


def _files(v: Any) -> dict[str, FileEntry]:
    if not isinstance(v, dict) or not v:
        raise ValueError(f"field 'files': expected a non-empty object, got {v!r}")
    out = {}
    for name, entry in v.items():
        _name(name, "files")
        if not isinstance(entry, dict):
            raise ValueError(f"field 'files'[{name!r}]: expected an object, got {entry!r}")
        sha = entry.get("sha256")
        if not isinstance(sha, str) or not _HEX64.match(sha):
            raise ValueError(
                f"field 'files'[{name!r}]['sha256']: expected 64 hex digits, got {sha!r}"
            )
        out[name] = FileEntry(_int(entry.get("size"), f"files[{name!r}]['size']", 0), sha)
    return out


def _name(v: Any, what: str) -> str:
    try:
        return check_file_name(v, what)
    except ValueError as e:
        raise ValueError(f"field {what!r}: {e}") from None


def _int(v: Any, what: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not minimum <= v <= _MAX_INT:
        raise ValueError(f"field {what!r}: expected an integer >= {minimum}, got {v!r}")
    return v


def _opt_int(v: Any, what: str, minimum: int) -> int | None:
    return None if v is None else _int(v, what, minimum)


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"field {what!r}: expected a finite number, got {v!r}")
    return v


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise ValueError(f"field {what!r}: expected a string, got {v!r}")
    return v


def _bool(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"field {what!r}: expected true or false, got {v!r}")
    return v


def _opt_token(v: Any, what: str) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not _TOKEN.match(v):
        raise ValueError(f"field {what!r}: expected an identifier or null, got {v!r}")
    return v
