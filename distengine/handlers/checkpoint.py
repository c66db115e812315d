"""Checkpoint: Ignite's checkpoint handler, made a safe collective over ranks."""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from distengine import distributed as idist
from distengine.checkpoint.async_writer import BackgroundWriter
from distengine.checkpoint.catalog import latest_for_all
from distengine.checkpoint.collective import broadcast_from, gather_to_all, handshake
from distengine.checkpoint.errors import CheckpointSaveError
from distengine.checkpoint.loading import load_objects
from distengine.checkpoint.naming import setup_filename_pattern
from distengine.checkpoint.policy import (
    Item,
    SavePlan,
    basename,
    check_arguments,
    decide_save,
    default_score_fn,
    describe_error,
    store_with_handler,
    takes_metadata,
)
from distengine.checkpoint.shared import ensure_shared
from distengine.checkpoint.state import build_payload, has_rank_state, local_state_dict, snapshot
from distengine.checkpoint.storage import Storage
from distengine.engine import Engine, EventEnum, Events
from distengine.handlers.disk_saver import DiskSaver

__all__ = ["Checkpoint", "CheckpointEvents"]

logger = logging.getLogger(__name__)


class CheckpointEvents(EventEnum):
    """Events fired by :class:`Checkpoint`: ``SAVED_CHECKPOINT`` after each save."""

    SAVED_CHECKPOINT = "saved_checkpoint"


class Checkpoint:
    """Saves objects periodically, keeps the best or latest ``n_saved``, and loads them back.

    An event handler with Ignite's arguments, file names, retention and
    ``SAVED_CHECKPOINT`` event, made safe on many ranks:

    - a call is a **collective**: attach it on every rank. Objects with
      ``rank_state_dict()`` (the :class:`~distengine.engine.Engine`: RNG states, cursor,
      metric state) contribute one entry per rank, gathered to the writer; other objects
      contribute ``state_dict()`` from ``save_on_rank``. A call on one rank alone raises
      ``CheckpointCollectiveError`` within ``DISTENGINE_CHECKPOINT_TIMEOUT`` seconds;
    - only ``save_on_rank`` writes and every rank learns the outcome: a failed write
      raises ``CheckpointSaveError`` on all ranks and earlier checkpoints stay intact
      (old ones are removed only after the new one is committed);
    - a checkpoint is a payload plus a manifest written last (:mod:`distengine.checkpoint`);
      :meth:`latest` and :meth:`load_objects` verify digests; retention is rebuilt from
      the manifests after a restart;
    - ``async_save=True`` copies the state to CPU at the call and writes it on a
      low-priority background thread; the next call, :meth:`wait` and the end of the run
      (``COMPLETED``, ``EXCEPTION_RAISED``) wait for it, and a background failure is
      raised by the next call (or ``wait``) on every rank. ``SAVED_CHECKPOINT`` then
      means "captured and being written";
    - without a score function, a handler whose ``to_save`` holds an ``Engine`` also
      saves (and finishes writing) when that engine stops for preemption (SIGTERM or
      SIGUSR1), unless it already saved at that iteration.

    Args:
        to_save: objects by name (``state_dict``/``load_state_dict`` and/or
            ``rank_state_dict``/``load_rank_state_dict``); DDP and compiled models are
            saved through the model they wrap.
        save_handler: a :class:`DiskSaver`, a directory path or URL (then
            ``DiskSaver(save_handler, create_dir=True)``), or a callable
            ``(checkpoint, filename[, metadata])`` with an optional ``remove(filename)``.
        filename_prefix: prefix of the file names.
        score_function: ``engine -> number``; the ``n_saved`` highest scores are kept.
        score_name: name of the score in file names; alone, it scores with
            ``engine.state.metrics[score_name]``.
        n_saved: how many checkpoints to keep (``None``: all).
        global_step_transform: ``(engine, event_name) -> int`` step for file names.
        filename_pattern: a pattern with ``{filename_prefix}``, ``{name}``, ``{score}``,
            ``{score_name}``, ``{global_step}``, ``{ext}``.
        include_self: also save this handler's ``state_dict`` under ``"checkpointer"``.
        greater_or_equal: an equal score replaces the older checkpoint.
        save_on_rank: the rank that writes.
        async_save: write in a background thread (see above).

    Example:
        >>> to_save = {"model": model, "optimizer": opt, "trainer": trainer}  # doctest: +SKIP
        >>> handler = Checkpoint(to_save, DiskSaver("/ckpt", require_empty=False), n_saved=2)  # doctest: +SKIP
        >>> trainer.add_event_handler(Events.ITERATION_COMPLETED(every=100), handler)  # doctest: +SKIP
        >>> path = Checkpoint.latest("/ckpt")  # on every rank  # doctest: +SKIP
        >>> if path: Checkpoint.load_objects(to_save, path)  # doctest: +SKIP
    """

    SAVED_CHECKPOINT = CheckpointEvents.SAVED_CHECKPOINT
    Item = Item
    setup_filename_pattern = staticmethod(setup_filename_pattern)
    get_default_score_fn = staticmethod(default_score_fn)

    def __init__(
        self,
        to_save: Mapping[str, Any],
        save_handler: str | os.PathLike | Callable | DiskSaver,
        filename_prefix: str = "",
        score_function: Callable[[Engine], float] | None = None,
        score_name: str | None = None,
        n_saved: int | None = 1,
        global_step_transform: Callable | None = None,
        filename_pattern: str | None = None,
        include_self: bool = False,
        greater_or_equal: bool = False,
        save_on_rank: int = 0,
        async_save: bool = False,
    ):
        check_arguments(
            to_save, save_handler, n_saved, global_step_transform, include_self, save_on_rank
        )
        handshake("create")  # a handler made on one rank only would later hang its peers
        if isinstance(save_handler, (str, os.PathLike)):
            save_handler = DiskSaver(save_handler, create_dir=True)
        self.to_save = to_save
        self.save_handler = save_handler
        self._handler_metadata = isinstance(save_handler, DiskSaver) or takes_metadata(save_handler)
        self.filename_prefix = filename_prefix
        self.score_name = score_name
        if score_name is not None and score_function is None:
            score_function = default_score_fn(score_name)
        self.score_function = score_function
        self.n_saved = n_saved
        self.ext = "pt"
        self.global_step_transform = global_step_transform
        self.filename_pattern = filename_pattern
        self.include_self = include_self
        self.greater_or_equal = greater_or_equal
        self.save_on_rank = save_on_rank
        self.async_save = async_save
        self._saved: list[Item] = []
        self._saved_before_pending: list[Item] | None = None
        self._retention_known = False  # until rebuilt from the manifests, loaded or reset
        self._writer = BackgroundWriter() if async_save else None
        self._hooked: weakref.WeakSet = weakref.WeakSet()
        self._name = next(iter(to_save)) if len(to_save) == 1 else "checkpoint"
        self._last_saved_at: int | None = None  # trainer iteration of the last save
        for obj in to_save.values():
            if isinstance(obj, Engine) and score_function is None:  # a resume checkpoint
                obj.register_preemption_saver(self._save_for_preemption)

    @property
    def last_checkpoint(self) -> str | None:
        """Path/URL (with a ``DiskSaver``) or file name of the newest kept checkpoint."""
        if not self._saved:
            return None
        name = self._saved[-1].filename
        return self.save_handler.url_of(name) if isinstance(self.save_handler, DiskSaver) else name

    def reset(self) -> None:
        """Forgets the kept checkpoints (for independent runs); deletes nothing."""
        self._saved = []
        self._retention_known = True

    def state_dict(self) -> dict[str, Any]:
        """``{"_saved": [[priority, filename], ...]}``."""
        return {"_saved": [[p, f] for p, f in self._saved]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores the kept list from :meth:`state_dict` (instead of the manifests)."""
        if not isinstance(state_dict, Mapping) or "_saved" not in state_dict:
            raise ValueError(f"Expected a state_dict with key '_saved', got {state_dict!r}")
        self._saved = [Item(p, f) for p, f in state_dict["_saved"]]
        self._retention_known = True

    def attach(self, engine: Engine, event_name: Any = Events.ITERATION_COMPLETED) -> None:
        """Registers ``SAVED_CHECKPOINT`` on ``engine`` now and adds this handler to ``event_name``."""
        self._hook(engine)
        engine.add_event_handler(event_name, self)

    # --- saving --------------------------------------------------------------------------
    def __call__(self, engine: Engine, *args: Any, **kwargs: Any) -> None:
        self._hook(engine)
        handshake("save")
        if isinstance(self.save_handler, DiskSaver):
            ensure_shared(self.save_handler.storage)  # once per directory: all ranks see it
        is_writer = idist.get_rank() == self.save_on_rank
        plan, cause = self._plan(engine) if is_writer else (None, None)
        plan = broadcast_from(plan, src=self.save_on_rank)
        if plan.previous_failed and self._saved_before_pending is not None:
            self._saved = self._saved_before_pending  # the failed write is not kept
        self._saved_before_pending = None
        if plan.error is not None:
            if not plan.previous_failed and isinstance(cause, (ValueError, TypeError)):
                raise cause  # the user's own error (e.g. a bad score), as Ignite raises it
            raise CheckpointSaveError(plan.error) from cause
        self._retention_known = True
        kept = [Item(p, f) for p, f in plan.saved]
        if not plan.save:
            self._saved = kept
            return
        rank_keys = [k for k, obj in self.to_save.items() if has_rank_state(obj)]
        per_rank = (
            gather_to_all({k: self.to_save[k].rank_state_dict() for k in rank_keys})
            if rank_keys
            else []
        )
        outcome, error = None, None
        if is_writer:
            try:
                self._write(plan, rank_keys, per_rank)
            except Exception as e:
                outcome, error = (
                    f"save of {plan.filename!r} on rank {self.save_on_rank} failed: {describe_error(e)}",
                    e,
                )
        outcome = broadcast_from(outcome, src=self.save_on_rank)
        if outcome is not None:
            raise CheckpointSaveError(outcome) from error
        if self.async_save:
            self._saved_before_pending = list(self._saved)
        self._saved = kept
        self._last_saved_at = dict(plan.fields)["iteration"]
        engine.fire_event(CheckpointEvents.SAVED_CHECKPOINT)

    def _save_for_preemption(self, trainer: Engine) -> None:
        """Called on every rank by a trainer stopping for preemption: save, and finish
        writing before the process exits (unless this iteration is already saved)."""
        if self._last_saved_at != trainer.state.iteration:
            self(trainer)
        self.wait()

    def _plan(self, engine: Engine) -> tuple[SavePlan, BaseException | None]:
        """Writer only: waits for the previous write, scores, decides names and retention."""
        if self._writer is not None:
            previous = self._writer.wait()
            if previous is not None:
                return SavePlan(
                    f"previous background save failed: {describe_error(previous)}", True
                ), previous
        try:
            return self._decide(engine), None
        except Exception as e:
            return SavePlan(
                f"could not prepare the save on rank {self.save_on_rank}: {describe_error(e)}"
            ), e

    def _decide(self, engine: Engine) -> SavePlan:
        if not self._retention_known and isinstance(self.save_handler, DiskSaver):
            base = basename(self.filename_prefix, self._name)
            self._saved = [
                Item(p, f) for p, f in self.save_handler.saved_items(base, self.score_name)
            ]
        trainer = next((o for o in self.to_save.values() if isinstance(o, Engine)), engine)
        return decide_save(
            engine,
            self._saved,
            name=self._name,
            filename_prefix=self.filename_prefix,
            score_function=self.score_function,
            score_name=self.score_name,
            global_step_transform=self.global_step_transform,
            filename_pattern=self.filename_pattern,
            n_saved=self.n_saved,
            greater_or_equal=self.greater_or_equal,
            ext=self.ext,
            manifest_fields={
                "iteration": trainer.state.iteration,
                "epoch": trainer.state.epoch,
                "world_size": idist.get_world_size(),
                "holds_engine": any(isinstance(o, Engine) for o in self.to_save.values()),
            },
        )

    def _write(self, plan: SavePlan, rank_keys: list[str], per_rank: list[dict]) -> None:
        """Writer only: builds the payload and writes it (now, or in the background)."""
        states = {
            k: local_state_dict(obj)
            for k, obj in self.to_save.items()
            # a metric's state_dict is a collective (Ignite's): its rank state is saved instead
            if hasattr(obj, "state_dict") and not getattr(obj, "_state_dict_is_collective", False)
        }
        rank_states = {k: [entry[k] for entry in per_rank] for k in rank_keys}
        extra = (
            {"checkpointer": {"_saved": [list(it) for it in plan.saved]}}
            if self.include_self
            else {}
        )
        payload = build_payload(states, rank_states, len(per_rank), extra)
        if self._writer is None:
            self._store(plan, payload)
        else:
            copy = snapshot(payload)  # later training steps must not leak into the file
            self._writer.submit(lambda: self._store(plan, copy))

    def _store(self, plan: SavePlan, payload: Any) -> None:
        store_with_handler(self.save_handler, self._handler_metadata, plan, payload)

    # --- background saves ----------------------------------------------------------------
    def wait(self) -> None:
        """Waits for a background save (``async_save=True``); a collective, like a save.

        Raises:
            CheckpointSaveError: on every rank, if the background write failed.
        """
        if self._writer is None:
            return
        handshake("wait")
        error = None
        if idist.get_rank() == self.save_on_rank:
            failed = self._writer.wait()
            if failed is not None:
                error = (
                    f"background save failed on rank {self.save_on_rank}: {describe_error(failed)}"
                )
        error = broadcast_from(error, src=self.save_on_rank)
        if error is not None and self._saved_before_pending is not None:
            self._saved = self._saved_before_pending
        self._saved_before_pending = None
        if error is not None:
            raise CheckpointSaveError(error)

    def _on_exception(self, engine: Engine, exc: BaseException) -> None:
        # Peers may be gone: no collective here, only finish (and report) our own write.
        if self._writer is not None and idist.get_rank() == self.save_on_rank:
            failed = self._writer.wait()
            if failed is not None:
                logger.error("Background checkpoint save failed: %s", describe_error(failed))
        # An EXCEPTION_RAISED handler makes the engine swallow the exception (Ignite's rule);
        # attaching an async Checkpoint must not change whether run() raises.
        if len(getattr(engine, "_event_handlers", {}).get(Events.EXCEPTION_RAISED, ())) == 1:
            raise exc

    def _hook(self, engine: Engine) -> None:
        """Once per engine: registers SAVED_CHECKPOINT and, for async saves, the waits."""
        if engine in self._hooked:
            return
        self._hooked.add(engine)
        registered = getattr(engine, "has_registered_events", None)
        if registered is None or not registered(CheckpointEvents.SAVED_CHECKPOINT):
            engine.register_events(*CheckpointEvents)
        if self._writer is not None:
            engine.add_event_handler(Events.COMPLETED, self.wait)
            engine.add_event_handler(Events.EXCEPTION_RAISED, self._on_exception)

    @staticmethod
    def load_objects(
        to_load: Mapping[str, Any],
        checkpoint: str | os.PathLike | Mapping[str, Any],
        strict: bool = True,
        map_location: Any = None,
        **storage_options: Any,
    ) -> None:
        """Loads each object of ``to_load`` from ``checkpoint`` (a path/URL or a mapping).

        A path is first verified against its manifest (size and SHA-256; a mismatch
        raises ``CheckpointIntegrityError`` naming the file). DDP/DataParallel models load
        into ``.module``; ``module.`` and ``_orig_mod.`` key prefixes are stripped. Objects
        with ``load_rank_state_dict`` get this rank's entry when the world size is the one
        saved; at another world size that per-rank state (RNG, metric accumulators) is
        skipped with a warning and only the global state is restored. Not a collective.

        Args:
            to_load: objects by name, as in ``to_save``.
            checkpoint: a path or URL, or a mapping already loaded.
            strict: passed to ``nn.Module.load_state_dict``; with ``strict=True`` every
                name of ``to_load`` must also be in the checkpoint.
            map_location: passed to ``torch.load``.
            **storage_options: for the fsspec filesystem of a URL.

        Example:
            >>> Checkpoint.load_objects({"model": model}, "/ckpt/model_100.pt", map_location="cpu")  # doctest: +SKIP
        """
        load_objects(
            to_load, checkpoint, strict=strict, map_location=map_location, **storage_options
        )

    @staticmethod
    def latest(
        dirname: str | os.PathLike | DiskSaver,
        filename_prefix: str | None = None,
        **storage_options: Any,
    ) -> str | None:
        """Path/URL of the newest valid checkpoint that holds an engine, or None; a collective.

        Rank 0 lists the manifests and verifies digests, highest save sequence number
        first, skipping partial or corrupt checkpoints with a warning; every rank receives
        the same answer.

        Args:
            dirname: the directory (path, URL or :class:`DiskSaver`).
            filename_prefix: only checkpoints saved with this prefix.
            **storage_options: for the fsspec filesystem of a URL.

        Example:
            >>> path = Checkpoint.latest("s3://bucket/run1", key="...", secret="...")  # doctest: +SKIP
        """

        storage = getattr(dirname, "storage", None) or Storage(dirname, **storage_options)
        return latest_for_all(storage, filename_prefix)
