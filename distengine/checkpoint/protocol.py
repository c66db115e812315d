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
crash-safe names, retention from storage) or any Ignite save handler.

**Sharded state** (``checkpoint/sharded.py``: FSDP models, their optimizers) replaces step
6 with a write by every rank, into a directory target only:

6a. every rank takes the sharded objects' state; the writing rank lists the directory,
    picks the payload name and the per-rank file names and records the intent; one
    all-gather shares the names, each rank's per-rank state and any error (so every rank
    raises together, before anything is written);
6b. every rank writes its shards into its own file through DCP (a collective; a replicated
    tensor is written once); DCP's own gather brings every file's size and SHA-256 to
    every rank, once every file is durable;
6c. the writing rank writes the payload (the other objects, per-rank state, where each
    shard lies) and commits the manifest listing every file.

With ``async_save`` every rank also copies its shards to CPU in 6a (the writer its
payload), so that 6a's gather agrees that every copy succeeded, and 6b-6c run on a
background thread of each rank (DCP on a gloo group of its own): the manifest, and with it
``latest`` and retention, advance only once every file is durable.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from distengine import distributed as idist
from distengine.checkpoint.async_writer import BackgroundWriter
from distengine.checkpoint.config import CheckpointConfig
from distengine.checkpoint.content import (
    RESERVED_KEY,
    build_payload,
    check_weights_only,
    has_rank_state,
    rank_state_only,
    snapshot,
    tree_state_dict,
)
from distengine.checkpoint.coordination import broadcast_from, gather_to_all, handshake
from distengine.checkpoint.errors import CheckpointConflictError, CheckpointSaveError
from distengine.checkpoint.identity import Identity, new_session, run_of
from distengine.checkpoint.ledger import SessionLedger
from distengine.checkpoint.plan import SavePlan, basename, make_plan
from distengine.checkpoint.policy import Item, rank
from distengine.checkpoint.sharded import (
    Part,
    description,
    files_of,
    find_parts,
    markers,
    part_state,
    shard_names,
)
from distengine.checkpoint.shared import ensure_shared
from distengine.checkpoint.writer import (
    DirectoryWriter,
    PendingSave,
    SaveRequest,
    SaveResult,
    WriterSession,
)
from distengine.distributed import sharded as dsh

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
        return self.writer.save(self._session(plan), request)

    # a checkpoint with per-rank files: begin (names, intent), the files, then complete
    def begin(self, plan: SavePlan, world_size: int, retry: tuple = ()) -> PendingSave:
        request = SaveRequest(plan.filename, None, dict(plan.fields), plan.remove, retry)
        return self.writer.begin(
            self._session(plan), request, lambda name: shard_names(name, world_size)
        )

    def complete(
        self, plan: SavePlan, pending: PendingSave, payload: Any, files: dict
    ) -> SaveResult:
        return self.writer.complete(self._session(plan), pending, payload, files)

    def abandon(self, pending: PendingSave, error: BaseException) -> None:
        self.writer.abandon(pending, error)

    def write_file(self, name: str, produce: Callable) -> tuple[int, str]:
        """Writes one per-rank file (atomic, hashed, bounded); returns its size and SHA-256."""
        info = self.writer.storage.write(name, produce, atomic=self.writer.atomic)
        return info.size, info.sha256

    def _session(self, plan: SavePlan) -> WriterSession:
        return WriterSession(plan.identity, self.ledger)

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
        self._staged_shards: Any = None  # every rank, async: the last copy of its shards

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

    @property
    def writing(self) -> bool:
        """Whether a background write was started and not yet waited for."""
        return self._writer is not None and self._writer.busy

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
        if not is_writer:
            self._finish_peer_write()
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
        parts = find_parts(to_save, cfg.sharded)
        outcome: tuple[str | None, bool, str | None] = (None, False, None)
        error: BaseException | None = None
        if parts:
            outcome, error = self._write_sharded(plan, to_save, parts, rank_keys)
        per_rank = (
            gather_to_all({k: to_save[k].rank_state_dict() for k in rank_keys})
            if rank_keys and not parts
            else []
        )
        if is_writer and not parts:
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
        if parts and self._writer is not None:
            # async sharded: every rank knows the outcome (an error raised on all of them
            # in _write_sharded; else the write is under way)
            message, conflict, payload_file = outcome
        else:
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

    # --- sharded state: every rank writes ------------------------------------------------
    def _write_sharded(
        self, plan: SavePlan, to_save: Mapping[str, Any], parts: list[Part], rank_keys: list[str]
    ) -> tuple[tuple[str | None, bool, str | None], BaseException | None]:
        """Steps 6a-6c (module docstring) on every rank; returns the writer's outcome.

        Errors every rank sees alike (a rank failed to take or copy its state, DCP failed
        on some rank) raise here on every rank; what only the writer sees (the payload or
        the manifest could not be written) is its outcome, broadcast by the caller.
        """
        cfg = self.config
        world, me = idist.get_world_size(), idist.get_rank()
        is_writer = me == cfg.save_on_rank
        target = self.target
        if not isinstance(target, DirectoryTarget):
            raise TypeError(
                f"{[p.key for p in parts]} hold sharded state, which every rank writes into a "
                "checkpoint directory: give Checkpoint a directory (a path, a URL or a "
                f"DiskSaver), not {type(getattr(target, 'handler', target)).__name__}"
            )
        # 6a: every rank's state (async: its copy, too), the writer's names and intent,
        # agreed in one gather
        asynchronous = self._writer is not None
        group = dsh.io_group(background=True) if asynchronous else None  # every rank is here
        local_error, states = None, None
        try:
            states = {p.key: part_state(p) for p in parts}
            check_weights_only(states, "sharded state")
            rank_state = {k: to_save[k].rank_state_dict() for k in rank_keys}
            if asynchronous:  # the previous background write was waited for: reuse its copy
                states = self._staged_shards = dsh.stage(states, reuse=self._staged_shards)
        except Exception as e:
            self._staged_shards = None
            local_error, rank_state = f"rank {me}: {type(e).__name__}: {e}", {}
        pending, payload, names, writer_error = None, None, None, None
        if is_writer and local_error is None:
            try:
                payload = self._sharded_payload(plan, to_save, parts)
                if asynchronous:  # its own memory: training goes on during the write
                    payload = self._staging = snapshot(payload, reuse=self._staging)
                retry, self._unremoved = tuple(self._unremoved), []
                pending = target.begin(plan, world, retry)
                names = shard_names(pending.payload_name, world)
            except Exception as e:
                writer_error = e
        signature = [(p.key, p.kind) for p in parts]
        gathered = gather_to_all(
            (
                rank_state,
                signature,
                local_error,
                names,
                _describe(writer_error),
                isinstance(writer_error, CheckpointConflictError),
            )
        )
        errors = [g[2] for g in gathered if g[2] is not None]
        signatures = {repr(g[1]) for g in gathered}
        if len(signatures) > 1:
            errors.append(
                "ranks disagree on which objects hold sharded state: "
                + "; ".join(f"rank {r}: {g[1]}" for r, g in enumerate(gathered))
            )
        w = gathered[cfg.save_on_rank]
        if w[4] is not None:
            errors.append(f"rank {cfg.save_on_rank}: {w[4]}")
        if errors:
            if pending is not None:
                target.abandon(pending, RuntimeError(errors[0]))
            raise _error_class(w[5])(
                f"save of {plan.filename!r} failed: {'; '.join(errors)}"
            ) from writer_error
        names = w[3]
        if is_writer:  # the payload records every rank's per-rank state
            per_rank = [g[0] for g in gathered]  # async: copied (its own may be live objects)
            payload = self._with_rank_states(
                payload, rank_keys, snapshot(per_rank) if asynchronous else per_rank
            )
        shards = dict(zip(names, range(world)))
        my_file = names[me]
        assert shards[my_file] == me
        if not asynchronous:
            try:
                metadata = dsh.save_state(states, my_file, target.write_file, dsh.io_group())
            except Exception as e:  # raised alike on every rank
                if pending is not None:
                    target.abandon(pending, e)
                raise CheckpointSaveError(
                    f"save of {plan.filename!r} failed while writing sharded state: "
                    f"{type(e).__name__}: {e}"
                ) from e
            if not is_writer:
                return (None, False, None), None
            try:
                result = self._complete_sharded(plan, pending, payload, metadata)
            except Exception as e:
                return (
                    f"save of {plan.filename!r} on rank {cfg.save_on_rank} failed: "
                    f"{type(e).__name__}: {e}",
                    isinstance(e, CheckpointConflictError),
                    None,
                ), e
            self._report(result)
            return (None, False, result.payload), None

        # async: every rank's copy was taken before 6a's gather, which agreed on it; write
        # in the background
        def job() -> None:
            try:
                metadata = dsh.save_state(states, my_file, target.write_file, group)
            except BaseException as e:
                if pending is not None:
                    target.abandon(pending, e)
                raise
            if is_writer:
                self._pending = self._complete_sharded(plan, pending, payload, metadata)

        assert self._writer is not None
        self._writer.submit(job)
        return (None, False, None), None

    def _sharded_payload(
        self, plan: SavePlan, to_save: Mapping[str, Any], parts: list[Part]
    ) -> dict[str, Any]:
        """Writer: the payload without per-rank state: the objects that are not sharded,
        a marker for each sharded one, the description of the sharded state."""
        replace = markers(parts)
        states = {
            k: tree_state_dict(obj, replace)
            for k, obj in to_save.items()
            if not rank_state_only(obj)
        }
        extra = (
            {"checkpointer": {"_saved": [(p, f) for p, f in plan.saved]}}
            if self.config.include_self
            else {}
        )
        payload = build_payload(states, {}, idist.get_world_size(), extra, description(parts))
        check_weights_only(payload)
        return payload

    @staticmethod
    def _with_rank_states(payload: dict, rank_keys: list[str], per_rank: list) -> dict:
        meta = payload[RESERVED_KEY]
        meta["rank_states"] = {k: [entry[k] for entry in per_rank] for k in rank_keys}
        check_weights_only(meta["rank_states"], "per-rank state")
        return payload

    def _complete_sharded(
        self, plan: SavePlan, pending: PendingSave, payload: dict, metadata: dict
    ) -> SaveResult:
        """Writer, once every per-rank file is durable: the payload, then the manifest."""
        payload[RESERVED_KEY]["sharded"]["metadata"] = metadata
        assert isinstance(self.target, DirectoryTarget)
        return self.target.complete(plan, pending, payload, files_of(metadata))

    def _finish_peer_write(self) -> None:
        """Not the writer: waits for this rank's background write of its shards (its
        failure, if any, failed the writer's too, which reports it)."""
        if self._writer is None:
            return
        failed = self._writer.wait()
        if failed is not None:
            self._staged_shards = None
            logger.warning(
                "Background write of this rank's shards failed (the writing rank reports "
                "it): %s: %s",
                type(failed).__name__,
                failed,
            )

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
        if idist.get_rank() != self.config.save_on_rank:
            self._finish_peer_write()
        else:
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


def _describe(error: BaseException | None) -> str | None:
    return None if error is None else f"{type(error).__name__}: {error}"
