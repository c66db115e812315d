"""Checkpoint and ModelCheckpoint: Ignite's checkpoint handlers, made a safe collective over
ranks. The save protocol itself lives in :mod:`distengine.checkpoint.protocol`."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from distengine.checkpoint.catalog import latest_for_all
from distengine.checkpoint.config import CheckpointConfig, check_to_save, default_score_fn
from distengine.checkpoint.content import check_objects, rank_state_only, tree_state_dict
from distengine.checkpoint.coordination import handshake
from distengine.checkpoint.loading import load_objects
from distengine.checkpoint.naming import check_pattern, render_filename, setup_filename_pattern
from distengine.checkpoint.policy import Item
from distengine.checkpoint.protocol import CollectiveSave, DirectoryTarget, target_for
from distengine.checkpoint.save_handler import BaseSaveHandler
from distengine.checkpoint.storage import Storage
from distengine.engine import Engine, EventEnum, Events
from distengine.handlers.disk_saver import DiskSaver

__all__ = ["BaseSaveHandler", "Checkpoint", "CheckpointEvents", "ModelCheckpoint"]


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
      raises ``CheckpointSaveError`` on all ranks and earlier checkpoints stay intact;
    - with a ``DiskSaver`` (or a directory), a checkpoint is a payload plus a manifest
      committed last (``docs/checkpoints.md``): a crash at any point of a save leaves the
      previous checkpoint loadable and returned by :meth:`latest`, whatever the names;
      :meth:`latest` and :meth:`load_objects` verify digests;
    - retention only ever deletes checkpoints this handler wrote, in this run or in the
      run it resumes (manifests record the run id and a key of the handler's settings);
      after a restart it is rebuilt from them. A new run (not resumed) starts its own
      retention and leaves older runs' checkpoints alone. A second live run saving the
      same names into the directory is stopped with ``CheckpointConflictError``;
    - ``async_save=True`` copies the state to CPU at the call and writes it on a
      low-priority background thread; the next call, :meth:`wait` and the end of the run
      (``COMPLETED``, ``EXCEPTION_RAISED``) wait for it, and a background failure is
      raised by the next call (or ``wait``) on every rank. ``SAVED_CHECKPOINT`` then
      means "captured and being written";
    - without a score function, a handler whose ``to_save`` holds an ``Engine`` also
      saves (and finishes writing) when that engine stops for preemption (SIGTERM or
      SIGUSR1), unless it already saved at that iteration;
    - **sharded state** is saved without gathering it: a model sharded with FSDP2 (e.g.
      ``idist.auto_model(model, sharding="fsdp")``), its optimizer, and any object whose
      state holds DTensors are written by every rank, each into a file of its own, through
      PyTorch's distributed checkpoint (DCP); the manifest, committed last, lists every file with
      its SHA-256, and the same rules hold (``latest``, retention, crash safety). Such a
      checkpoint loads at any world size (``load_objects`` on every rank).

    Args:
        to_save: objects by name (``state_dict``/``load_state_dict`` and/or
            ``rank_state_dict``/``load_rank_state_dict``), or lists and dicts of them;
            DDP and compiled models are saved through the model they wrap.
        save_handler: a :class:`DiskSaver`, a directory path or URL (then
            ``DiskSaver(save_handler, create_dir=True)``), a :class:`BaseSaveHandler`, or
            a callable ``(checkpoint, filename[, metadata])``.
        filename_prefix: prefix of the file names (no ``/``).
        score_function: ``engine -> number``; the ``n_saved`` highest scores are kept
            (NaN ranks below every number).
        score_name: name of the score in file names; alone, it scores with
            ``engine.state.metrics[score_name]``.
        n_saved: how many checkpoints to keep (``None``: all).
        global_step_transform: ``(engine, event_name) -> int`` step for file names.
        filename_pattern: a pattern with ``{filename_prefix}``, ``{name}``, ``{score}``,
            ``{score_name}``, ``{global_step}``, ``{ext}`` (checked here).
        include_self: also save this handler's ``state_dict`` under ``"checkpointer"``.
        greater_or_equal: an equal score replaces the older checkpoint.
        save_on_rank: the rank that writes.
        async_save: write in a background thread (see above); with sharded state, every
            rank copies its shards to CPU and writes them in the background, and the
            manifest is committed once all files are durable.
        sharded: also save every model and optimizer of ``to_save`` as sharded state (a
            replicated model is then written once, spread over the ranks, and loads into
            a sharded model as well). Sharded state is always saved that way.

    Raises:
        TypeError, ValueError: an argument that cannot work, saying what was expected
            (an empty ``to_save``, an unknown field in ``filename_pattern``, a ``/`` in
            ``filename_prefix`` …).

    Example:
        >>> to_save = {"model": model, "optimizer": optimizer, "trainer": trainer}
        >>> handler = Checkpoint(to_save, DiskSaver("ckpt", require_empty=False), n_saved=2)
        >>> handle = trainer.add_event_handler(Events.ITERATION_COMPLETED(every=2), handler)
        >>> path = Checkpoint.latest("ckpt")  # on every rank; None: nothing saved yet
        >>> if path:
        ...     Checkpoint.load_objects(to_save, path)
        >>> state = trainer.run(loader, max_epochs=2)
        >>> handler.last_checkpoint.name  # 4 saved, the newest 2 kept
        'checkpoint_8.pt'
    """

    SAVED_CHECKPOINT = CheckpointEvents.SAVED_CHECKPOINT
    Item = Item
    setup_filename_pattern = staticmethod(setup_filename_pattern)
    get_default_score_fn = staticmethod(default_score_fn)
    _needs_objects = True  # ModelCheckpoint receives its objects at each call

    def __init__(
        self,
        to_save: Mapping[str, Any],
        save_handler: str | os.PathLike | Callable | BaseSaveHandler,
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
        sharded: bool = False,
    ):
        check_to_save(to_save, include_self, allow_empty=not self._needs_objects)
        if not isinstance(save_handler, (str, os.PathLike, BaseSaveHandler)) and not callable(
            save_handler
        ):
            raise TypeError(
                "Argument `save_handler` should be a string or Path object or callable or "
                f"inherit from BaseSaveHandler, but given {type(save_handler).__name__}"
            )
        self.config = CheckpointConfig(
            filename_prefix=filename_prefix,
            score_function=score_function,
            score_name=score_name,
            n_saved=n_saved,
            global_step_transform=global_step_transform,
            filename_pattern=filename_pattern,
            include_self=include_self,
            greater_or_equal=greater_or_equal,
            save_on_rank=save_on_rank,
            async_save=async_save,
            sharded=sharded,
        )
        if len(to_save) > 0:  # the names this handler will use must be plain file names
            check_pattern(
                filename_pattern or setup_filename_pattern(bool(filename_prefix)),
                filename_prefix,
                self._name(to_save),
            )
        handshake("create")  # a handler made on one rank only would later hang its peers
        if isinstance(save_handler, (str, os.PathLike)):
            save_handler = DiskSaver(save_handler, create_dir=True)
        self.to_save = to_save
        self._protocol = CollectiveSave(self.config, target_for(save_handler))
        self._save_handler = save_handler
        self._hooked: weakref.WeakSet = weakref.WeakSet()
        for obj in to_save.values():
            if isinstance(obj, Engine) and self.config.score_function is None:  # resume checkpoint
                obj.register_preemption_saver(self._save_for_preemption)

    # --- Ignite's attributes -------------------------------------------------------------
    @property
    def save_handler(self) -> Any:
        """Where checkpoints go (settable, as in Ignite)."""
        return self._save_handler

    @save_handler.setter
    def save_handler(self, handler: Any) -> None:
        self._save_handler = handler
        self._protocol.target = target_for(handler)

    @property
    def _saved(self) -> list[Item]:
        return self._protocol.saved

    filename_prefix = property(lambda self: self.config.filename_prefix)
    score_function = property(lambda self: self.config.score_function)
    score_name = property(lambda self: self.config.score_name)
    n_saved = property(lambda self: self.config.n_saved)
    global_step_transform = property(lambda self: self.config.global_step_transform)
    filename_pattern = property(lambda self: self.config.filename_pattern)
    include_self = property(lambda self: self.config.include_self)
    greater_or_equal = property(lambda self: self.config.greater_or_equal)
    save_on_rank = property(lambda self: self.config.save_on_rank)
    async_save = property(lambda self: self.config.async_save)
    sharded = property(lambda self: self.config.sharded)
    ext = property(lambda self: self.config.ext)

    @property
    def writing(self) -> bool:
        """Whether a background save (``async_save=True``) is still to be waited for:
        ``True`` from the save until :meth:`wait` (or the end of the run, which waits).
        Always ``False`` without ``async_save``.

        Example:
            >>> handler = Checkpoint({"model": torch.nn.Linear(1, 1)}, "/tmp/c")  # doctest: +SKIP
            >>> handler.writing  # doctest: +SKIP
            False
        """
        return self._protocol.writing

    @property
    def last_checkpoint(self) -> str | Path | None:
        """Path (``Path``, local directory), URL, or file name (other save handlers) of the
        newest kept checkpoint; ``None`` before the first save. With ``async_save`` it is
        final once the write is done (``wait``)."""
        return self._protocol.url_of_last()

    def reset(self) -> None:
        """Forgets the kept checkpoints (for independent runs); deletes nothing."""
        self._protocol.reset()

    def state_dict(self) -> dict[str, Any]:
        """Returns the kept checkpoints: ``{"_saved": [(priority, filename), ...]}`` (as Ignite)."""
        return {"_saved": [(p, f) for p, f in self._protocol.saved]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores the kept list from :meth:`state_dict` (instead of the manifests)."""
        if not isinstance(state_dict, Mapping) or "_saved" not in state_dict:
            raise ValueError(f"Expected a state_dict with key '_saved', got {state_dict!r}")
        try:
            saved = [Item(p, f) for p, f in state_dict["_saved"]]
        except (TypeError, ValueError):
            raise ValueError(
                f"Expected '_saved' to be a list of (priority, filename) pairs, got {state_dict['_saved']!r}"
            ) from None
        self._protocol.load(saved)

    def attach(self, engine: Engine, event_name: Any = Events.ITERATION_COMPLETED) -> None:
        """Registers ``SAVED_CHECKPOINT`` on ``engine`` now and adds this handler to ``event_name``."""
        self._hook(engine)
        engine.add_event_handler(event_name, self)

    def _setup_checkpoint(self) -> dict[str, Any]:
        """The state dicts of ``to_save``, in its nesting (what a save stores per object)."""
        return {k: tree_state_dict(o) for k, o in self.to_save.items() if not rank_state_only(o)}

    @staticmethod
    def _name(to_save: Mapping[str, Any]) -> str:
        return next(iter(to_save)) if len(to_save) == 1 else "checkpoint"

    # --- saving --------------------------------------------------------------------------
    def __call__(self, engine: Engine, *args: Any, **kwargs: Any) -> None:
        self._hook(engine)
        trainer = next((o for o in self.to_save.values() if isinstance(o, Engine)), None)
        if self._protocol.save(engine, self.to_save, trainer):
            engine.fire_event(CheckpointEvents.SAVED_CHECKPOINT)

    def _save_for_preemption(self, trainer: Engine) -> None:
        """Called on every rank by a trainer stopping for preemption: save, and finish
        writing before the process exits (unless this iteration is already saved)."""
        if self._protocol.last_saved_at != trainer.state.iteration:
            self(trainer)
        self.wait()

    def wait(self) -> None:
        """Waits for a background save (``async_save=True``); a collective, like a save.

        Raises:
            CheckpointSaveError: on every rank, if the background write failed.
        """
        self._protocol.wait()

    def _on_exception(self, engine: Engine, exc: BaseException) -> None:
        # Peers may be gone: no collective here, only finish (and report) our own write.
        self._protocol.finish_locally()
        # An EXCEPTION_RAISED handler makes the engine swallow the exception (Ignite's rule);
        # attaching an async Checkpoint must not change whether run() raises.
        if len(engine.event_handlers(Events.EXCEPTION_RAISED)) == 1:
            raise exc

    def _hook(self, engine: Engine) -> None:
        """Once per engine: registers SAVED_CHECKPOINT and, for async saves, the waits."""
        if engine in self._hooked:
            return
        self._hooked.add(engine)
        registered = getattr(engine, "has_registered_events", None)
        if registered is None or not registered(CheckpointEvents.SAVED_CHECKPOINT):
            engine.register_events(*CheckpointEvents)
        if self.config.async_save:
            engine.add_event_handler(Events.COMPLETED, self.wait)
            engine.add_event_handler(Events.EXCEPTION_RAISED, self._on_exception)

    # --- loading -------------------------------------------------------------------------
    def reload_objects(
        self,
        to_load: Mapping[str, Any],
        load_kwargs: dict | None = None,
        **filename_components: Any,
    ) -> None:
        """Loads ``to_load`` from a checkpoint of this handler's directory, named from
        ``filename_components`` (``name``, ``score``, ``global_step``) as this handler
        names its files.

        Args:
            to_load: objects by name.
            load_kwargs: passed to :meth:`load_objects` (e.g. ``{"strict": False}``).
            **filename_components: ``name`` (default: the key of a single object, else
                ``"checkpoint"``), ``score``, ``global_step``.

        Raises:
            AttributeError: the save handler is not a directory (``DiskSaver``).
        """
        if not isinstance(self._protocol.target, DirectoryTarget):
            raise AttributeError(
                "Checkpoint's `save_handler` should be of type `DiskSaver` (a checkpoint "
                f"directory) to reload objects, given {type(self.save_handler).__name__}"
            )
        check_objects(to_load, "load_state_dict", "to_load")
        cfg = self.config
        filename = render_filename(
            cfg.filename_pattern,
            filename_prefix=cfg.filename_prefix,
            name=filename_components.get("name", self._name(self.to_save or to_load)),
            score_name=cfg.score_name,
            score=filename_components.get("score"),
            global_step=filename_components.get("global_step"),
            ext=cfg.ext,
        )
        name = self._protocol.stored.get(filename, filename)
        storage = self._protocol.target.writer.storage
        self.load_objects(
            to_load,
            storage.url_of(name),
            io_timeout=storage.io_timeout,
            **{**storage.storage_options, **(load_kwargs or {})},
        )

    @staticmethod
    def load_objects(
        to_load: Mapping[str, Any],
        checkpoint: str | os.PathLike | Mapping[str, Any],
        strict: bool = True,
        map_location: Any = None,
        io_timeout: float | None = None,
        **storage_options: Any,
    ) -> None:
        """Loads each object of ``to_load`` from ``checkpoint`` (a path/URL or a mapping).

        A path is first verified against its manifest (the same checks as :meth:`latest`,
        then size and SHA-256; a mismatch raises ``CheckpointIntegrityError`` naming the
        file). ``to_load`` may nest objects in lists and dicts as ``to_save`` did.
        DDP/DataParallel models load into ``.module``; ``module.`` and ``_orig_mod.`` key
        prefixes are stripped. Objects with ``load_rank_state_dict`` get this rank's entry
        when the world size is the one saved; at another world size that per-rank state
        (RNG, metric accumulators) is skipped with a warning and only the global state is
        restored. Not a collective, except for a sharded checkpoint at world size > 1:
        then every rank calls it (a lone rank raises ``CheckpointCollectiveError``), each
        reads the shards its objects need (sharded models and optimizers take this
        rank's part of every tensor, whole models the whole of it, at any world size),
        and every file is verified against its SHA-256 first.

        Args:
            to_load: objects by name, as in ``to_save``.
            checkpoint: a path or URL, or a mapping already loaded.
            strict: passed to ``nn.Module.load_state_dict``; with ``strict=True`` every
                name of ``to_load`` must also be in the checkpoint.
            map_location: passed to ``torch.load``.
            io_timeout: seconds after which a stalled read fails.
            **storage_options: for the fsspec filesystem of a URL.

        Example:
            >>> handler = Checkpoint({"model": model}, "ckpt")
            >>> handler(trainer)  # saves now
            >>> Checkpoint.load_objects({"model": model}, handler.last_checkpoint, map_location="cpu")
        """
        load_objects(
            to_load,
            checkpoint,
            strict=strict,
            map_location=map_location,
            io_timeout=io_timeout,
            **storage_options,
        )

    @staticmethod
    def latest(
        dirname: str | os.PathLike | DiskSaver,
        filename_prefix: str | None = None,
        io_timeout: float | None = None,
        **storage_options: Any,
    ) -> str | None:
        """Returns the newest valid checkpoint that holds an engine (path or URL), or None.

        A collective: call it on every rank.

        Rank 0 lists the manifests and verifies them as :meth:`load_objects` would
        (manifest checksum and fields, then digests), highest save sequence number first,
        skipping partial or corrupt checkpoints with a warning; every rank receives the
        same answer. The newest checkpoint saved in the directory wins, whichever run
        saved it. A directory whose checkpoints hold no engine gives ``None`` with a
        warning.

        Args:
            dirname: the directory (path, URL or :class:`DiskSaver`).
            filename_prefix: only checkpoints saved with this prefix.
            io_timeout: seconds after which a stalled storage call fails.
            **storage_options: for the fsspec filesystem of a URL.

        Example:
            >>> Checkpoint.latest("ckpt") is None  # nothing saved there yet
            True
            >>> # needs an S3 bucket and its credentials:
            >>> path = Checkpoint.latest("s3://bucket/run1", key="...", secret="...")  # doctest: +SKIP
        """
        storage = getattr(dirname, "storage", None)
        if not isinstance(storage, Storage):
            storage = Storage(dirname, io_timeout=io_timeout, **storage_options)
        return latest_for_all(storage, filename_prefix)


class ModelCheckpoint(Checkpoint):
    """Ignite's ``ModelCheckpoint``: a :class:`Checkpoint` into a directory that receives
    the objects to save at each call, ``handler(engine, to_save)``.

    Args:
        dirname: the directory (local path or URL).
        filename_prefix, score_function, score_name, n_saved, global_step_transform,
            filename_pattern, include_self, greater_or_equal, save_on_rank: as for
            :class:`Checkpoint`.
        atomic, require_empty, create_dir: as for :class:`DiskSaver`.
        **kwargs: :class:`DiskSaver` options (``torch.save`` and storage options).

    Example:
        >>> handler = ModelCheckpoint("models", "myprefix", n_saved=2, require_empty=False)
        >>> handle = trainer.add_event_handler(Events.EPOCH_COMPLETED, handler, {"model": model})
        >>> state = trainer.run(loader, max_epochs=3)
        >>> handler.last_checkpoint.name
        'myprefix_model_12.pt'
    """

    _needs_objects = False

    def __init__(
        self,
        dirname: str | os.PathLike,
        filename_prefix: str = "",
        score_function: Callable | None = None,
        score_name: str | None = None,
        n_saved: int | None = 1,
        atomic: bool = True,
        require_empty: bool = True,
        create_dir: bool = True,
        global_step_transform: Callable | None = None,
        filename_pattern: str | None = None,
        include_self: bool = False,
        greater_or_equal: bool = False,
        save_on_rank: int = 0,
        **kwargs: Any,
    ):
        saver = DiskSaver(
            dirname, atomic=atomic, create_dir=create_dir, require_empty=require_empty, **kwargs
        )
        super().__init__(
            to_save={},
            save_handler=saver,
            filename_prefix=filename_prefix,
            score_function=score_function,
            score_name=score_name,
            n_saved=n_saved,
            global_step_transform=global_step_transform,
            filename_pattern=filename_pattern,
            include_self=include_self,
            greater_or_equal=greater_or_equal,
            save_on_rank=save_on_rank,
        )

    @property
    def last_checkpoint(self) -> str | Path | None:
        """Path (local) or URL of the newest kept checkpoint, ``None`` before the first save."""
        if not self._saved:
            return None
        if not isinstance(self._protocol.target, DirectoryTarget):
            raise RuntimeError(
                f"Internal error, save_handler should be DiskSaver, but has {type(self.save_handler)}."
            )
        return super().last_checkpoint

    def __call__(self, engine: Engine, to_save: Mapping[str, Any]) -> None:  # type: ignore[override]
        if not isinstance(to_save, Mapping) or len(to_save) == 0:
            raise RuntimeError("No objects to checkpoint found.")
        check_to_save(to_save, self.config.include_self)
        self.to_save = to_save
        super().__call__(engine)
