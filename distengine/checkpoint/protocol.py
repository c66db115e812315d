"""The collective save protocol: one call of a checkpoint handler, on every rank.

:class:`CollectiveSave` runs these steps in this order on every rank (``docs/checkpoints.md``
has the reasoning):

1. **handshake**: all ranks entered the same save (a store-based check that fails in
   bounded time instead of hanging a lone rank);
2. **prepare**: the first save of a handler checks that every rank sees the writing rank's
   directory;
3. **plan** (writing rank): wait for the previous background write, bind the run, rebuild
   retention from storage if unknown, score, name, decide what retention drops;
4. **broadcast** the plan; every rank raises the same error if there is one;
5. **gather** per-rank state (``rank_state_dict``) to every rank;
6. **write** (writing rank): build the payload and hand it to the target, now or on the
   background writer (``async_save``); a failure before the commit leaves everything
   older intact;
7. **broadcast the outcome**: a failed write raises on every rank; retention state is
   rolled back when a background write fails.

The target is where files go: a directory (``DiskSaver``: manifests, run identity,
crash-safe names, retention from storage) or any Ignite save handler. A sharded target
(every rank writes its own files; one manifest listing all of them is committed last,
after every rank's files are durable) fits between steps 5 and 7: its per-rank writes
join step 6, their file digests are gathered, and the writing rank commits the manifest.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from distengine import distributed as idist
from distengine.checkpoint.async_writer import BackgroundWriter
from distengine.checkpoint.collective import broadcast_from, gather_to_all, handshake
from distengine.checkpoint.config import CheckpointConfig
from distengine.checkpoint.errors import CheckpointConflictError, CheckpointSaveError
from distengine.checkpoint.identity import Identity, new_session, run_of
from distengine.checkpoint.ledger import SessionLedger
from distengine.checkpoint.plan import SavePlan, basename, make_plan
from distengine.checkpoint.policy import Item, rank
from distengine.checkpoint.shared import ensure_shared
from distengine.checkpoint.state import (
    build_payload,
    has_rank_state,
    rank_state_only,
    snapshot,
    tree_state_dict,
)
from distengine.checkpoint.writer import DirectoryWriter, SaveRequest, SaveResult, WriterSession

__all__ = ["CallableTarget", "CollectiveSave", "DirectoryTarget", "target_for"]

logger = logging.getLogger(__name__)

_UNBOUND = object()


class DirectoryTarget:
    """Saves through a :class:`DirectoryWriter` (a ``DiskSaver``'s ``checkpoint_writer``)."""

    def __init__(self, writer: DirectoryWriter, handler: Any):
        self.writer = writer
        self.handler = handler
        self.ledger = SessionLedger()
        self.shared_checked = False

    def prepare(self, writer_rank: int) -> None:
        if not self.shared_checked:  # once per handler (the same on every rank)
            ensure_shared(self.writer.storage, src=writer_rank)  # all ranks see it
            self.shared_checked = True

    def rebuild(self, identity: Identity) -> tuple[list[Item], tuple]:
        owned = self.writer.owned(identity, self.ledger.manifest_cache)
        owned.sort(key=lambda m: (rank(m.priority), m.sequence))
        return [Item(m.priority, m.name) for m in owned], tuple((m.name, m.payload) for m in owned)

    def write(self, plan: SavePlan, payload: Any, retry: tuple = ()) -> SaveResult:
        request = SaveRequest(plan.filename, payload, dict(plan.fields), plan.remove, retry)
        return self.writer.save(WriterSession(plan.identity, self.ledger), request)

    def url_of(self, name: str) -> Any:
        return self.handler.url_of(name)


class CallableTarget:
    """Saves through any save handler: ``handler(checkpoint, filename[, metadata])`` and,
    for what retention drops, ``handler.remove(filename)`` if it has one."""

    def __init__(self, handler: Callable):
        self.handler = handler
        self.takes_metadata = _takes_metadata(handler)

    def prepare(self, writer_rank: int) -> None:
        pass

    def rebuild(self, identity: Identity) -> None:
        return None

    def write(self, plan: SavePlan, payload: Any, retry: tuple = ()) -> SaveResult:
        remove = getattr(self.handler, "remove", None)
        if plan.replaces and callable(remove):
            remove(plan.filename)  # Ignite's order for a name saved again: remove, then save
        if self.takes_metadata:
            self.handler(payload, plan.filename, dict(plan.metadata))
        else:
            self.handler(payload, plan.filename)  # Ignite's two-argument form
        if callable(remove):
            for filename in plan.remove:
                remove(filename)
        return SaveResult(plan.filename, None)  # type: ignore[arg-type]

    def url_of(self, name: str) -> Any:
        return name


def target_for(handler: Any) -> DirectoryTarget | CallableTarget:
    """The target for a save handler: its directory writer if it has one, else the call."""
    writer = getattr(handler, "checkpoint_writer", None)
    if isinstance(writer, DirectoryWriter):
        return DirectoryTarget(writer, handler)
    return CallableTarget(handler)


def _takes_metadata(fn: Callable) -> bool:
    try:
        inspect.signature(fn).bind(None, None, None)
    except TypeError:
        return False
    except ValueError:  # no signature available: assume the full form
        return True
    return True


class CollectiveSave:
    """The save protocol of one handler (see the module docstring).

    Owns the handler's retention state: ``saved`` (``Item(priority, name)``, lowest
    first), ``stored`` (name -> file holding it, when that differs) and whether the list
    is known or must be rebuilt from storage.

    Args:
        config: the handler's settings.
        target: where files go (:func:`target_for`).
    """

    def __init__(self, config: CheckpointConfig, target: DirectoryTarget | CallableTarget):
        self.config = config
        self.target = target
        self.saved: list[Item] = []
        self.stored: dict[str, str] = {}
        self.retention_known = False
        self.last_saved_at: int | None = None
        self.session = new_session()
        self._run: Any = _UNBOUND
        self._writer = BackgroundWriter() if config.async_save else None
        self._rollback: tuple[list[Item], dict[str, str]] | None = None
        self._pending: SaveResult | None = None
        self._unremoved: list = []  # writer: (manifest, files) whose removal failed
        self._staging: Any = None  # writer, async: the last copy written in the background

    # --- retention state -----------------------------------------------------------------
    def reset(self) -> None:
        """Forgets the kept checkpoints; the next save binds to the run in progress."""
        self.saved, self.stored = [], {}
        self.retention_known = True
        self._run = _UNBOUND

    def load(self, saved: list[Item]) -> None:
        """Takes ``saved`` as the kept list (from a handler's ``state_dict``)."""
        self.saved, self.stored = sorted(saved, key=lambda it: rank(it.priority)), {}
        self.retention_known = True

    def url_of_last(self) -> Any:
        """The path/URL (or name) of the newest kept checkpoint, or None."""
        if not self.saved:
            return None
        name = self.saved[-1].filename
        return self.target.url_of(self.stored.get(name, name))

    # --- one save ------------------------------------------------------------------------
    def save(self, engine: Any, to_save: Mapping[str, Any], trainer: Any) -> bool:
        """Runs the protocol for one call; returns whether a checkpoint was saved.

        Raises:
            ValueError, TypeError: the user's own error on the writing rank (a bad score),
                raised as is on that rank.
            CheckpointConflictError: another live run writes these names in the directory.
            CheckpointSaveError: the write failed (on every rank).
        """
        cfg = self.config
        handshake("save")
        self.target.prepare(cfg.save_on_rank)
        is_writer = idist.get_rank() == cfg.save_on_rank
        plan, cause = self._plan(engine, to_save, trainer) if is_writer else (None, None)
        plan = broadcast_from(plan, src=cfg.save_on_rank)
        if plan.previous_failed and self._rollback is not None:
            self.saved, self.stored = self._rollback  # the failed write is not kept
        self._rollback = None
        if plan.error is not None:
            if not plan.previous_failed and isinstance(cause, (ValueError, TypeError)):
                raise cause  # the user's own error (e.g. a bad score), as Ignite raises it
            raise _error_class(plan.conflict)(plan.error) from cause
        self.retention_known = True
        kept = [Item(p, f) for p, f in plan.saved]
        self.stored = dict(plan.stored)  # the writer's view
        if not plan.save:
            self.saved = kept
            return False
        rank_keys = [k for k, obj in to_save.items() if has_rank_state(obj)]
        per_rank = (
            gather_to_all({k: to_save[k].rank_state_dict() for k in rank_keys}) if rank_keys else []
        )
        outcome: tuple[str | None, bool, str | None] = (None, False, None)
        error: BaseException | None = None
        if is_writer:
            try:
                outcome = (None, False, self._write(plan, to_save, rank_keys, per_rank))
            except Exception as e:
                error = e
                outcome = (
                    f"save of {plan.filename!r} on rank {cfg.save_on_rank} failed: "
                    f"{type(e).__name__}: {e}",
                    isinstance(e, CheckpointConflictError),
                    None,
                )
        message, conflict, payload_file = broadcast_from(outcome, src=cfg.save_on_rank)
        if message is not None:
            raise _error_class(conflict)(message) from error
        if self._writer is not None:
            self._rollback = (list(self.saved), dict(self.stored))
        self.saved = kept
        self._remember(plan.filename, payload_file)
        for name in plan.remove:
            self.stored.pop(name, None)
        self.last_saved_at = dict(plan.fields).get("iteration")
        return True

    def _plan(
        self, engine: Any, to_save: Mapping[str, Any], trainer: Any
    ) -> tuple[SavePlan, BaseException | None]:
        """Writer only: waits for the previous write, scores, decides names and retention."""
        if self._writer is not None:
            previous = self._writer.wait()
            if previous is not None:
                self._staging = None  # a timed-out call may still be reading it
                return SavePlan(
                    f"previous background save failed: {type(previous).__name__}: {previous}",
                    previous_failed=True,
                    conflict=isinstance(previous, CheckpointConflictError),
                ), previous
            self._collect()
        try:
            return self._decide(engine, to_save, trainer), None
        except Exception as e:
            return SavePlan(
                f"could not prepare the save on rank {self.config.save_on_rank}: "
                f"{type(e).__name__}: {e}"
            ), e

    def _decide(self, engine: Any, to_save: Mapping[str, Any], trainer: Any) -> SavePlan:
        cfg = self.config
        name = next(iter(to_save)) if len(to_save) == 1 else "checkpoint"
        identity = Identity(
            self._bind(trainer, engine),
            cfg.handler_key(basename(cfg.filename_prefix, name), list(to_save)),
            self.session,
        )
        stored: tuple = tuple(self.stored.items())
        if not self.retention_known:
            rebuilt = self.target.rebuild(identity) if identity.run_id is not None else None
            if rebuilt is not None:
                self.saved, stored = rebuilt
            else:
                self.saved = []
        source = trainer if trainer is not None else engine
        fields = {
            "iteration": source.state.iteration,
            "epoch": source.state.epoch,
            "world_size": idist.get_world_size(),
            "holds_engine": trainer is not None,
        }
        return make_plan(
            engine, cfg, self.saved, name=name, fields=fields, identity=identity, stored=stored
        )

    def _bind(self, trainer: Any, engine: Any) -> str | None:
        """The run this handler's retention belongs to.

        With the trainer in ``to_save``: the trainer's run, followed as it changes (a new
        run starts its own retention). Without: the run in progress at the first save,
        kept until :meth:`reset`.
        """
        run = run_of(trainer, engine)
        if self._run is _UNBOUND:
            self._run = run
        elif trainer is not None and run != self._run:
            self._run = run
            self.retention_known = False
        return self._run

    def _write(
        self, plan: SavePlan, to_save: Mapping[str, Any], rank_keys: list[str], per_rank: list
    ) -> str | None:
        """Writer only: builds the payload and writes it (now, or in the background)."""
        states = {k: tree_state_dict(obj) for k, obj in to_save.items() if not rank_state_only(obj)}
        rank_states = {k: [entry[k] for entry in per_rank] for k in rank_keys}
        extra = (
            {"checkpointer": {"_saved": [(p, f) for p, f in plan.saved]}}
            if self.config.include_self
            else {}
        )
        payload = build_payload(states, rank_states, len(per_rank), extra)
        retry, self._unremoved = tuple(self._unremoved), []
        if self._writer is None:
            result = self.target.write(plan, payload, retry)
            self._report(result)
            return result.payload
        # later training steps must not leak into the file; the previous copy's memory is
        # free again (its write was waited for) and is reused
        copy = self._staging = snapshot(payload, reuse=self._staging)
        self._writer.submit(lambda: self._background(plan, copy, retry))
        return None

    def _background(self, plan: SavePlan, payload: Any, retry: tuple) -> None:
        self._pending = self.target.write(plan, payload, retry)

    def _collect(self) -> None:
        """Writer only: takes in the result of a finished background write."""
        result, self._pending = self._pending, None
        if result is not None:
            self._report(result)
            self._remember(
                result.manifest.name if result.manifest else result.payload, result.payload
            )

    def _remember(self, name: str, payload_file: str | None) -> None:
        if payload_file is None:
            return
        if payload_file == name:
            self.stored.pop(name, None)
        else:
            self.stored[name] = payload_file

    def _report(self, result: SaveResult) -> None:
        self._unremoved.extend(result.unremoved)
        for message in result.warnings:
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    # --- background writes ---------------------------------------------------------------
    def wait(self) -> None:
        """Waits for a background write; a collective (see ``Checkpoint.wait``)."""
        if self._writer is None:
            return
        handshake("wait")
        error, conflict = None, False
        if idist.get_rank() == self.config.save_on_rank:
            failed = self._writer.wait()
            if failed is not None:
                self._staging = None  # a timed-out call may still be reading it
                error = (
                    f"background save failed on rank {self.config.save_on_rank}: "
                    f"{type(failed).__name__}: {failed}"
                )
                conflict = isinstance(failed, CheckpointConflictError)
            else:
                self._collect()
        error, conflict, stored = broadcast_from(
            (error, conflict, dict(self.stored)), src=self.config.save_on_rank
        )
        if error is not None and self._rollback is not None:
            self.saved, self.stored = self._rollback
        self._rollback = None
        if error is not None:
            raise _error_class(conflict)(error)
        self.stored = stored

    def finish_locally(self) -> None:
        """Writer only, no collective: finishes a background write (peers may be gone)."""
        if self._writer is not None and idist.get_rank() == self.config.save_on_rank:
            failed = self._writer.wait()
            if failed is not None:
                logger.error(
                    "Background checkpoint save failed: %s: %s", type(failed).__name__, failed
                )
            else:
                self._collect()


def _error_class(conflict: bool) -> type[CheckpointSaveError]:
    return CheckpointConflictError if conflict else CheckpointSaveError
