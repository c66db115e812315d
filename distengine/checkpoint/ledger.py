"""What one writer session knows of its directory between saves: who else is writing.

Each save lists the directory. A manifest that appeared since this session's previous
save and was written by another session is a *live* writer: it saved while this one was
running. That is harmless when it is another handler of the same run (two handlers, one
directory), or another run writing other names. It is a conflict when it is

- another run writing checkpoints named like this handler's (same base name, or a file
  name this session wrote): two jobs sharing a directory and ``filename_prefix``; or
- another session of this very run and handler: the same job started twice, or two
  handlers with identical settings in one directory.

Of the two writers in conflict, the one that joined the directory second stops, with a
:class:`~distengine.checkpoint.errors.CheckpointConflictError` naming the directory and
the other run, before it writes anything more; the first goes on, with a warning. Both
decide alike from what the manifests record (no clocks): each manifest holds its
session's first sequence number and the highest sequence number that session saw in the
directory before it first wrote. A session that saw the other's checkpoints before it
started is the one that joined second; if neither or both did, the larger session
identifier stops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from distengine.checkpoint.catalog import Scan
from distengine.checkpoint.errors import CheckpointConflictError
from distengine.checkpoint.identity import Identity
from distengine.checkpoint.manifest import Manifest

__all__ = ["SessionLedger"]


@dataclass
class SessionLedger:
    """Per handler and directory: where this session started, what it saw last time."""

    first_sequence: int | None = None
    base_sequence: int | None = None
    last_seen: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)
    warned: set[str] = field(default_factory=set)
    manifest_cache: dict = field(default_factory=dict)

    def start(self, scan: Scan, sequence: int) -> None:
        """Records the session's first save (its sequence number and what it saw)."""
        if self.first_sequence is None:
            self.first_sequence = sequence
            self.base_sequence = scan.max_sequence

    def record(self, scan: Scan, written: list[str], name: str) -> None:
        """Remembers the manifests present once a save is done."""
        self.last_seen = {e.manifest_name for e in scan.entries} | set(written)
        self.names.add(name)

    def check(self, scan: Scan, me: Identity, basename: str, url: str) -> list[str]:
        """Raises if this session must stop; returns warnings for the writer that goes on.

        Raises:
            CheckpointConflictError: another live writer uses this handler's names here and
                this session is the one that joined second.
        """
        if self.first_sequence is None:
            return []
        messages = []
        for entry in scan.entries:
            m = entry.manifest
            if entry.manifest_name in self.last_seen or m.session in (None, me.session):
                continue
            same_run = me.run_id is not None and m.run_id == me.run_id
            duplicate = same_run and m.handler == me.handler
            if same_run and not duplicate:
                continue  # another handler of this run
            if not duplicate and not (m.basename == basename or m.name in self.names):
                continue  # another run, other names
            what = _describe(m, duplicate, url)
            if self._joined_second(m, me):
                raise CheckpointConflictError(
                    f"{what}. This writer (run {me.run_id}, session {me.session}) joined the "
                    "directory after it and stops before writing; "
                    + (
                        "give one of two handlers with identical settings another "
                        "filename_prefix, or make sure the job runs once"
                        if duplicate
                        else "give this run another directory or filename_prefix, or stop the "
                        "other run (resuming it instead is fine: a resumed run keeps its run id)"
                    )
                )
            if m.session not in self.warned:
                self.warned.add(m.session)
                messages.append(
                    f"{what}. It joined the directory after this writer and will stop at its "
                    "next save; this one goes on"
                )
        return messages

    def _joined_second(self, other: Manifest, me: Identity) -> bool:
        i_saw_it = (
            other.session_first is not None
            and self.base_sequence is not None
            and self.base_sequence >= other.session_first
        )
        it_saw_me = (
            other.session_base is not None
            and self.first_sequence is not None
            and other.session_base >= self.first_sequence
        )
        if i_saw_it != it_saw_me:
            return i_saw_it
        return me.session > (other.session or "")


def _describe(m: Manifest, duplicate: bool, url: str) -> str:
    who = (
        f"another writer of the same run ({m.run_id}) and handler settings (session {m.session})"
        if duplicate
        else f"another run ({m.run_id or 'no run id'}, session {m.session})"
    )
    at = f" at iteration {m.iteration}" if m.iteration is not None else ""
    return (
        f"{url}: {who} is saving checkpoints named like this handler's "
        f"({m.basename!r}; last: {m.name!r}{at}) into the same directory"
    )
