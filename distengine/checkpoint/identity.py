"""Who wrote a checkpoint: the run, the handler, and the writer session.

Every manifest records three identifiers:

- ``run_id``: the training run (``engine.state.run_id``: drawn when a run starts, saved
  in the engine's ``state_dict`` and so kept by every resume of that run);
- ``handler``: the handler's key, a digest of the settings that decide its file names
  and retention (base name, score name, pattern, ``n_saved``, ``greater_or_equal``,
  ``include_self``, whether it has a score function or a step transform, the names in
  ``to_save``). The same handler built again after a restart has the same key;
- ``session``: one handler object in one process (random, new at every restart).

A handler owns the checkpoints with its run and its key, whichever session wrote them:
those of the run it continues, and its own in this run. Retention and crash clean-up
touch nothing else; when its trainer starts a new run, the checkpoints of the previous
run are no longer its own. A checkpoint written outside any run (``run_id`` null)
belongs to its session only.

Example:
    >>> key = handler_key({"basename": "checkpoint", "n_saved": 2})
    >>> len(key), key == handler_key({"n_saved": 2, "basename": "checkpoint"})
    (12, True)
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from distengine.engine.running import outermost_engine

__all__ = ["Identity", "handler_key", "new_session", "run_of"]

_TOKEN = re.compile(r"^[0-9a-zA-Z_-]{1,64}$")


@dataclass(frozen=True)
class Identity:
    """The writer of a save: its run (``None`` outside any run), handler key and session."""

    run_id: str | None
    handler: str
    session: str

    def owns(self, run_id: str | None, handler: str | None, session: str | None) -> bool:
        """Whether a checkpoint written by ``(run_id, handler, session)`` is this writer's:
        same run and handler key; outside any run, same session."""
        if self.run_id is not None:
            return run_id == self.run_id and handler == self.handler
        return run_id is None and session is not None and session == self.session


def new_session() -> str:
    """A fresh session identifier (16 hex digits, from the OS's random source)."""
    return secrets.token_hex(8)


def handler_key(settings: dict[str, Any]) -> str:
    """12 hex digits that identify a handler by its settings (order of keys ignored)."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def run_of(trainer: Any, engine: Any) -> str | None:
    """The run a save belongs to.

    The trainer in ``to_save`` if there is one; otherwise the outermost engine running
    (a trainer whose handler runs the evaluator that fired this save), else ``engine``.
    ``None`` when that engine has no run (never run, or a state set by hand).
    """
    source = trainer if trainer is not None else (outermost_engine() or engine)
    state = getattr(source, "state", None)
    run_id = getattr(state, "run_id", None)
    if not isinstance(run_id, str) or not run_id:
        return None
    if _TOKEN.match(run_id):
        return run_id
    # a run id set by hand with other characters: its digest, so manifests can record it
    return "h" + hashlib.sha256(run_id.encode()).hexdigest()[:16]
