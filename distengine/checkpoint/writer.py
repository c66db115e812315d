"""Writing one checkpoint into a directory so that no crash ever loses the previous one.

A reader trusts a file only through a committed manifest, and the writer never changes
or deletes a file that a committed manifest lists until a newer checkpoint is committed.
One save goes through these steps (each a fault point, see
:mod:`~distengine.checkpoint.faults`):

1. list the directory; stop if another live run writes these names
   (:mod:`~distengine.checkpoint.ledger`); remove what earlier crashed saves of this
   handler left behind (below);
2. pick the payload file: the requested name if no file or manifest uses it, else a
   unique variant ``{stem}.{8 hex}{ext}``; record an *intent* (a small marker naming
   the files this save may create, and its owner);
3. write the payload (temporary file + fsync + rename, or one atomic upload);
4. write the manifest (same way): the commit point. Its sequence number is higher than
   any manifest in the directory;
5. after the commit: delete this handler's older checkpoint of the same name; if the
   payload went to a unique variant and the requested name is now free, copy it there
   (hard link or server-side copy), commit a manifest for the copy, then delete the
   unique variant ("promotion"); delete the checkpoints retention dropped; delete the
   intent. A failure in this step is reported as a warning: the checkpoint is saved.

A checkpoint may have more files than its payload (a sharded checkpoint: one per rank).
:meth:`DirectoryWriter.begin` does steps 1 and 2 for all of them (names free together,
all named in the intent) before anyone writes them; once every one is durable,
:meth:`DirectoryWriter.complete` writes the payload and the manifest listing them all.

Removal deletes the manifest first, then the files. Crash leftovers are found through
intents: an intent of this handler (same run and handler key, or this session) whose
files no committed manifest lists names an unfinished save; its files, their temporary
files and unfinished multipart uploads are removed by the handler's next save.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from distengine.checkpoint.catalog import Scan, scan
from distengine.checkpoint.content import check_weights_only
from distengine.checkpoint.faults import fault_point
from distengine.checkpoint.identity import Identity, new_session
from distengine.checkpoint.ledger import SessionLedger
from distengine.checkpoint.manifest import (
    FileEntry,
    Manifest,
    check_file_name,
    manifest_candidates,
    manifest_name,
)
from distengine.checkpoint.storage import Storage

__all__ = [
    "MANIFEST_FIELDS",
    "DirectoryWriter",
    "PendingSave",
    "SaveRequest",
    "SaveResult",
    "WriterSession",
    "remove_checkpoint",
    "write_checkpoint",
]

# Fields a caller may give for the manifest; the rest (files, sequence, identity) is ours.
MANIFEST_FIELDS = (
    "iteration",
    "epoch",
    "world_size",
    "filename_prefix",
    "holds_engine",
    "basename",
    "score_name",
    "priority",
)

_INTENT_PREFIX = ".ckpt-intent."
_INTENT_RE = re.compile(
    r"^\.ckpt-intent\.(?P<run>[0-9a-zA-Z_-]+)\.(?P<handler>[0-9a-zA-Z_-]+)\."
    r"(?P<session>[0-9a-zA-Z_-]+)\.(?P<seq>\d+)\.json$"
)
_MAX_INTENT_BYTES = 1 << 16
_NO_RUN = "norun"


@dataclass
class SaveRequest:
    """One checkpoint to write.

    Attributes:
        name: the file name the handler asked for (``"checkpoint_100.pt"``).
        payload: what to ``torch.save``; must load with ``weights_only=True``.
        fields: manifest fields from :data:`MANIFEST_FIELDS`.
        retire: names of this handler's checkpoints to delete once this one is committed.
        leftovers: ``(manifest, files)`` of older checkpoints whose removal an earlier save
            could not finish (``SaveResult.unremoved``).
    """

    name: str
    payload: Any
    fields: dict[str, Any] = field(default_factory=dict)
    retire: tuple[str, ...] = ()
    leftovers: tuple[tuple[str, tuple[str, ...]], ...] = ()


_UNSET: Any = object()


@dataclass
class PendingSave:
    """A save between :meth:`DirectoryWriter.begin` and :meth:`DirectoryWriter.complete`:
    the directory as listed, the sequence number, the payload file and every file the
    intent names."""

    request: SaveRequest
    found: Scan
    notes: list[str]
    sequence: int
    payload_name: str
    intent: str
    files: list[str]
    fields: dict[str, Any]
    basename: str


@dataclass
class SaveResult:
    """What a save did: the file holding the payload, its manifest, post-commit problems
    and the older checkpoints (``(manifest, files)``) it could not remove, to retry."""

    payload: str
    manifest: Manifest
    warnings: list[str] = field(default_factory=list)
    unremoved: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)


@dataclass
class WriterSession:
    """One writer (a handler object, or a ``DiskSaver`` used directly) in one directory."""

    identity: Identity
    ledger: SessionLedger = field(default_factory=SessionLedger)

    @classmethod
    def anonymous(cls, handler: str = "direct") -> WriterSession:
        """A session outside any run (it owns only what it writes itself)."""
        return cls(Identity(None, handler, new_session()))


class DirectoryWriter:
    """Writes and removes checkpoints in one directory (see the module docstring).

    Args:
        storage: the directory.
        atomic: on a local disk, write temporary files and rename them.
        save_kwargs: extra keyword arguments for ``torch.save``.

    Example:
        >>> w = DirectoryWriter(Storage("memory://writer-doc"))
        >>> w.save(WriterSession.anonymous(), SaveRequest("c_1.pt", {"w": torch.ones(1)})).payload
        'c_1.pt'
    """

    def __init__(self, storage: Storage, atomic: bool = True, save_kwargs: dict | None = None):
        self.storage = storage
        self.atomic = atomic
        self.save_kwargs = dict(save_kwargs or {})

    # --- saving --------------------------------------------------------------------------
    def save(self, session: WriterSession, request: SaveRequest) -> SaveResult:
        """Writes ``request`` crash-safely; see the module docstring for the steps.

        Raises:
            CheckpointConflictError: another live writer uses these names here.
            TypeError: the payload holds a value ``torch.load(weights_only=True)`` refuses.
            OSError, CheckpointTimeoutError: the storage failed before the commit; nothing
                older was touched.
        """
        check_weights_only(request.payload)
        return self.complete(session, self.begin(session, request))

    def begin(
        self,
        session: WriterSession,
        request: SaveRequest,
        companions: Callable[[str], list[str]] | None = None,
    ) -> PendingSave:
        """Steps 1 and 2: lists the directory, picks the payload file and records the intent.

        Args:
            session: the writer session.
            request: what to save (its ``payload`` may still be unknown: see
                :meth:`complete`).
            companions: ``payload name -> names of the other files of this checkpoint``
                (a sharded checkpoint's per-rank files). They are chosen free together
                with the payload name and named in the intent before anyone writes them.

        Raises:
            CheckpointConflictError: another live writer uses these names here.
            OSError, CheckpointTimeoutError: the storage failed; nothing was written.
        """
        st, me = self.storage, session.identity
        check_file_name(request.name, "checkpoint file name")
        fields = {k: v for k, v in request.fields.items() if k in MANIFEST_FIELDS}
        basename = str(fields.get("basename", os.path.splitext(request.name)[0]))
        found = scan(st, session.ledger.manifest_cache)
        notes = session.ledger.check(found, me, basename, st.url)
        notes += self._clean_leftovers(found, me)
        sequence = found.max_sequence + 1
        session.ledger.start(found, sequence)
        extra = companions or (lambda name: [])
        payload_name = self._payload_name(request.name, found, extra)
        intent = self._intent_name(me, sequence)
        others = [check_file_name(n, "checkpoint file name") for n in extra(payload_name)]
        files = [payload_name, *others] + ([request.name] if payload_name != request.name else [])
        st.write_marker(intent, json.dumps({"files": files}).encode())
        return PendingSave(
            request, found, notes, sequence, payload_name, intent, files, fields, basename
        )

    def complete(
        self,
        session: WriterSession,
        pending: PendingSave,
        payload: Any = _UNSET,
        files: dict[str, FileEntry] | None = None,
    ) -> SaveResult:
        """Steps 3 to 5: writes the payload, commits the manifest (listing ``files`` too,
        which must be durable already), then tidies up.

        Args:
            session: the session that called :meth:`begin`.
            pending: what :meth:`begin` returned.
            payload: what to ``torch.save`` (default: the request's payload).
            files: the checkpoint's other files (named by ``begin``'s companions) and
                their size and SHA-256.

        Raises:
            CheckpointConflictError, TypeError, OSError, CheckpointTimeoutError: as
                :meth:`save`; what this save wrote is removed (files included).
        """
        request = pending.request
        if payload is _UNSET:
            payload = request.payload
        try:
            unknown = sorted(set(files or ()) - set(pending.files))
            if unknown:
                raise ValueError(f"files {unknown} were not announced by begin()")
            manifest = self._write_files(
                session, pending, payload, pending.payload_name, dict(files or {})
            )
        except BaseException as e:
            self.abandon(pending, e)
            raise
        # Committed: from here on a failure is a warning, never a failed save.
        written = [manifest_name(pending.payload_name)]
        result = SaveResult(pending.payload_name, manifest, pending.notes)
        self._after_commit(
            pending.found, session.identity, request, manifest, pending.intent, written, result
        )
        session.ledger.record(pending.found, written, request.name)
        return result

    def abandon(self, pending: PendingSave, error: BaseException) -> None:
        """After a save that failed before its commit (not a crash): removes what it wrote,
        best effort. A call that timed out may still be running, so then the intent stays
        for the next save."""
        self._abandon(pending.intent, pending.files, error)

    def _after_commit(
        self,
        found: Scan,
        me: Identity,
        request: SaveRequest,
        manifest: Manifest,
        intent: str,
        written: list[str],
        result: SaveResult,
    ) -> None:
        """Step 5. Each failure becomes a warning; after a timeout the removals still to
        do are handed back (``result.unremoved``) for the next save instead of waiting on
        a stalled store again."""
        st = self.storage
        doomed = [
            (e.manifest_name, tuple(e.manifest.files))
            for e in found.entries
            if (e.manifest.name == request.name or e.manifest.name in request.retire)
            and me.owns(e.manifest.run_id, e.manifest.handler, e.manifest.session)
        ]
        steps: list[tuple[str, Any]] = [("before_cleanup", lambda: fault_point("before_cleanup"))]
        gone: set[str] = set()  # manifests removed by this clean-up
        steps += [(m, lambda m=m, f=f: self._remove_files(found, m, f, gone)) for m, f in doomed]
        if manifest.payload != request.name:
            steps.append(
                ("promote", lambda: self._promote(request.name, manifest, result, written))
            )
        steps += [
            (m, lambda m=m, f=f: self._remove_files(found, m, f, gone))
            for m, f in request.leftovers
        ]
        pending = dict(doomed) | dict(request.leftovers)
        failed = stalled = False
        for what, step in steps:
            if not stalled:
                try:
                    step()
                    continue
                except Exception as e:
                    result.warnings.append(
                        f"{st.url_of(result.payload)} is saved, but tidying up after it failed: "
                        f"{type(e).__name__}: {e}"
                    )
                    failed, stalled = True, isinstance(e, TimeoutError)
            if what in pending:
                result.unremoved.append((what, pending[what]))
        if not failed:  # else the intent stays: the next save removes what is left of it
            try:
                st.remove(intent)
            except Exception as e:
                result.warnings.append(f"could not remove {st.url_of(intent)}: {e}")

    def _remove_files(
        self, found: Scan, manifest_file: str, files: tuple[str, ...], gone: set[str]
    ) -> None:
        """Removes an older checkpoint: its manifest, then its files that no other
        remaining checkpoint lists (its manifest may already be gone, after an interrupted
        removal). Two manifests of one checkpoint (a promoted copy and its unique variant)
        share its per-rank files: removing both removes them."""
        self.storage.remove(manifest_file)
        gone.add(manifest_file)
        others = {n for e in found.entries if e.manifest_name not in gone for n in e.manifest.files}
        for f in files:
            if f not in others:
                self.storage.remove(f)

    def _write_files(
        self,
        session: WriterSession,
        pending: PendingSave,
        payload: Any,
        payload_name: str,
        files: dict[str, FileEntry],
    ) -> Manifest:
        """Steps 3 and 4: the payload, then the manifest that commits it."""
        st, me, fields = self.storage, session.identity, pending.fields
        info = st.write(
            payload_name,
            lambda f: torch.save(payload, f, **self.save_kwargs),
            atomic=self.atomic,
        )
        fault_point("before_manifest")
        manifest = Manifest(
            name=pending.request.name,
            payload=payload_name,
            files={payload_name: FileEntry(info.size, info.sha256), **files},
            sequence=pending.sequence,
            iteration=fields.get("iteration"),
            epoch=fields.get("epoch"),
            world_size=int(fields.get("world_size", 1)),
            run_id=me.run_id,
            handler=me.handler,
            session=me.session,
            session_first=session.ledger.first_sequence,
            session_base=session.ledger.base_sequence,
            filename_prefix=str(fields.get("filename_prefix", "")),
            holds_engine=bool(fields.get("holds_engine", False)),
            basename=pending.basename,
            score_name=fields.get("score_name"),
            priority=fields.get("priority", 0),
        )
        st.write_bytes(manifest_name(payload_name), manifest.to_json(), atomic=self.atomic)
        return manifest

    def _abandon(self, intent: str, files: list[str], error: BaseException) -> None:
        """After a failed write (not a crash): removes what it wrote, best effort. A call
        that timed out may still be running, so then the intent stays for the next save."""
        if isinstance(error, TimeoutError):
            return
        st = self.storage
        try:
            for name in files:
                if not any(st.exists(m) for m in manifest_candidates(name)):
                    st.remove(name)
                    st.abort_uploads(name)
            st.remove(intent)
        except Exception:
            pass  # the storage is failing: the next save of this handler retries

    def _payload_name(self, name: str, found: Scan, companions: Callable[[str], list[str]]) -> str:
        """``name`` if nothing uses it or its companions (no file, no manifest, no live
        intent), else a unique variant: never overwrite a file a committed manifest may
        still list."""
        taken = set(found.files) | found.referenced() | _intended(self.storage, found)

        def free(candidate: str) -> bool:
            return (
                candidate not in taken
                and not any(m in found.files for m in manifest_candidates(candidate))
                and not any(c in taken for c in companions(candidate))
            )

        if free(name):
            return name
        stem, ext = os.path.splitext(name)
        while True:
            token = secrets.token_hex(4)
            unique = f"{stem}.{token}{ext}" if ext[1:].isalpha() else f"{name}.{token}"
            if free(unique) and manifest_name(unique) not in found.files:
                return unique

    def _promote(
        self, name: str, manifest: Manifest, result: SaveResult, written: list[str]
    ) -> None:
        st = self.storage
        if st.exists(name) or st.exists(manifest_name(name)):
            return  # the name belongs to another writer's checkpoint: keep the unique one
        fault_point("before_promote")
        st.link(manifest.payload, name)
        st.write_bytes(
            manifest_name(name),
            manifest.with_payload(name).to_json(),
            atomic=self.atomic,
            partial_phase="promote_partial",
        )
        written.append(manifest_name(name))
        result.payload = name
        fault_point("after_promote")
        written.remove(manifest_name(manifest.payload))
        st.remove(manifest_name(manifest.payload))
        st.remove(manifest.payload)

    def _remove_entry(self, manifest_file: str, m: Manifest) -> None:
        self.storage.remove(manifest_file)
        for f in m.files:
            self.storage.remove(f)

    # --- intents and leftovers -----------------------------------------------------------
    def _intent_name(self, me: Identity, sequence: int) -> str:
        return f"{_INTENT_PREFIX}{me.run_id or _NO_RUN}.{me.handler}.{me.session}.{sequence}.json"

    def _clean_leftovers(self, found: Scan, me: Identity) -> list[str]:
        """Removes what crashed saves of this writer left (see the module docstring)."""
        problems: list[str] = []
        referenced = found.referenced()
        for marker in [n for n in found.files if n.startswith(_INTENT_PREFIX)]:
            owner = _INTENT_RE.match(marker)
            if owner is None:
                continue
            run = None if owner["run"] == _NO_RUN else owner["run"]
            if not me.owns(run, owner["handler"], owner["session"]):
                continue
            try:
                for name in _intent_files(self.storage, marker):
                    if name in referenced:
                        continue
                    if name in found.files:
                        self.storage.remove(name)
                        del found.files[name]
                    for stem in (name, manifest_name(name)):
                        for tmp in self.storage.remove_temporaries(stem, found.files):
                            found.files.pop(tmp, None)
                    self.storage.abort_uploads(name)
                self.storage.remove(marker)
                del found.files[marker]
            except Exception as e:
                problems.append(
                    f"could not remove what an interrupted save left in {self.storage.url} "
                    f"({marker}): {type(e).__name__}: {e}"
                )
        return problems

    # --- removing ------------------------------------------------------------------------
    def remove(self, session: WriterSession, name: str) -> None:
        """Deletes the checkpoint(s) ``session`` saved under ``name`` (manifest first); if it
        saved none, the checkpoint whose payload file is ``name``."""
        found = scan(self.storage)
        mine = [
            e
            for e in found.entries
            if e.manifest.name == name
            and session.identity.owns(e.manifest.run_id, e.manifest.handler, e.manifest.session)
        ]
        if not mine:
            remove_checkpoint(self.storage, name)
            return
        for e in mine:
            self._remove_entry(e.manifest_name, e.manifest)

    def owned(self, identity: Identity, cache: dict | None = None) -> list[Manifest]:
        """The checkpoints ``identity`` owns here, one per name (the newest), oldest first."""
        newest: dict[str, Manifest] = {}
        for e in scan(self.storage, cache).entries:
            m = e.manifest
            if identity.owns(m.run_id, m.handler, m.session):
                newest[m.name] = m  # entries are sorted oldest first
        return sorted(newest.values(), key=lambda m: m.sequence)


def _intended(storage: Storage, found: Scan) -> set[str]:
    """Files named by any intent in the directory (a save may be writing them now)."""
    names: set[str] = set()
    for marker in found.files:
        if marker.startswith(_INTENT_PREFIX):
            try:
                names.update(_intent_files(storage, marker))
            except (OSError, ValueError):
                continue
    return names


def _intent_files(storage: Storage, marker: str) -> list[str]:
    try:
        data = json.loads(storage.read(marker, limit=_MAX_INTENT_BYTES))
        names = data["files"]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError):
        return []  # cut short by a crash: written before any file, so it names none yet
    if not isinstance(names, list):
        return []
    out = []
    for n in names:
        try:
            out.append(check_file_name(n))
        except ValueError:
            continue
    return out


def write_checkpoint(
    storage: Storage, filename: str, payload: Any, *, atomic: bool = True, **fields: Any
) -> Manifest:
    """Saves ``payload`` as ``filename`` in ``storage`` (a writer outside any run).

    Args:
        storage: the directory.
        filename: payload file name (``"checkpoint_100.pt"``).
        payload: what to ``torch.save``; must load with ``weights_only=True``.
        atomic: local disk: temporary file + fsync + rename (see :class:`Storage`).
        **fields: manifest fields from :data:`MANIFEST_FIELDS`.

    Returns:
        the manifest that was written.

    Raises:
        TypeError: an unknown field, or ``payload`` holds a value
            ``torch.load(weights_only=True)`` refuses.
        ValueError: ``filename`` is not a plain file name.
        OSError: the storage failed; earlier checkpoints are untouched.

    Example:
        >>> st = Storage("memory://writer-example")
        >>> write_checkpoint(st, "c_1.pt", {"w": torch.ones(1)}, iteration=1).payload
        'c_1.pt'
    """
    unknown = set(fields) - set(MANIFEST_FIELDS)
    if unknown:
        raise TypeError(
            f"Unknown manifest fields {sorted(unknown)}; expected some of {MANIFEST_FIELDS}"
        )
    writer = DirectoryWriter(storage, atomic=atomic)
    result = writer.save(WriterSession.anonymous(), SaveRequest(filename, payload, fields))
    for message in result.warnings:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return result.manifest


def remove_checkpoint(storage: Storage, filename: str) -> None:
    """Deletes the checkpoint whose payload file is ``filename`` (manifest first).

    Example:
        >>> remove_checkpoint(Storage("memory://writer-example"), "c_1.pt")
    """
    for m in manifest_candidates(filename):
        storage.remove(m)
    storage.remove(filename)
