"""The Engine: one run loop, Ignite's event order, rank agreement and exact resume."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import Any

from distengine import distributed as idist
from distengine.engine.datapass import DataPass
from distengine.engine.events import Events
from distengine.engine.preemption import Preempted, catch_preemption
from distengine.engine.rank_state import RankState
from distengine.engine.registry import EventRegistry
from distengine.engine.resume import apply_state_dict, build_state_dict
from distengine.engine.run_setup import check_engine_args, prepare_run
from distengine.engine.state import State

__all__ = ["Engine"]

# Agreement flags (docs/internals.md): OR-ed across ranks once per iteration.
TERMINATE, TERMINATE_EPOCH, INTERRUPT, SKIP_COMPLETED, PREEMPT = 1, 2, 4, 8, 16
SKIP_EPOCH_COMPLETED = 32


class _Terminate(Exception):  # noqa: N818 - control flow, not an error
    pass


class _TerminateEpoch(Exception):  # noqa: N818
    pass


class Engine(EventRegistry):
    """Runs ``process_function(engine, batch)`` over data for epochs, firing events.

    At world size > 1, ``terminate``/``terminate_epoch``/``interrupt`` requested on any
    rank take effect on every rank at the end of the same iteration (one small collective
    per iteration), and an exception on any rank ends the job on every rank.

    Args:
        process_function: ``(engine, batch) -> output``; the output lands in ``state.output``.
        sync_check_every: every N iterations compare (epoch, iteration, digest of the global
            batch's sample indices) across ranks and raise naming the first rank that
            diverged. ``None`` disables the check.

    Example:
        >>> def step(engine, batch):
        ...     return batch * 2
        >>> engine = Engine(step)
        >>> engine.run([1, 2, 3], max_epochs=2).iteration
        6
    """

    def __init__(
        self, process_function: Callable[[Engine, Any], Any], *, sync_check_every: int | None = None
    ):
        check_engine_args(process_function, sync_check_every)
        self.state = State()
        super().__init__()
        self._process_function = process_function
        self.sync_check_every = sync_check_every
        self.logger = logging.getLogger(__name__ + "." + self.__class__.__name__)
        self.should_terminate: bool | str = False
        self.should_terminate_single_epoch: bool | str = False
        self.should_interrupt = False
        self.interrupt_resume_enabled = True
        self._flags = 0
        self._state_dict_user_keys: list[str] = []
        self._rank_state = RankState()
        self._data = DataPass()
        self._dataloader_iter: Any = None
        self._init_iter: int | None = None
        self._run_gen: Generator | None = None
        self._preemption_savers: list[Callable[[Engine], Any]] = []
        self._preempt_signal: int | None = None
        self._preempt_bit = 0  # set by the signal handler; only cleared when acted upon
        idist.register_status_provider(self._status)  # weakly: for hang reports

    def _status(self) -> dict[str, Any]:
        """Where this engine is (read by the hang watchdog's thread)."""
        ev, s = self.last_event_name, self.state
        if ev is None:
            return {}
        name = getattr(self._process_function, "__name__", type(self).__name__)
        ev = getattr(ev, "name", ev)
        return {"engine": name, "epoch": s.epoch, "iteration": s.iteration, "last_event": ev}

    def terminate(self, skip_completed: bool = False) -> None:
        """Stops the run after the current iteration (or epoch-level event); fires
        ``TERMINATE`` then ``COMPLETED`` (unless ``skip_completed``)."""
        self.should_terminate = "skip_completed" if skip_completed else True
        self._flags |= TERMINATE | (SKIP_COMPLETED if skip_completed else 0)

    def terminate_epoch(self, skip_epoch_completed: bool = False) -> None:
        """Ends the current epoch after the current iteration; the run goes on with the next."""
        self.should_terminate_single_epoch = (
            "skip_epoch_completed" if skip_epoch_completed else True
        )
        self._flags |= TERMINATE_EPOCH | (SKIP_EPOCH_COMPLETED if skip_epoch_completed else 0)

    def interrupt(self) -> None:
        """Pauses the run after the current iteration; ``run()`` again continues from there."""
        self.should_interrupt = True
        self._flags |= INTERRUPT

    def register_preemption_saver(self, saver: Callable[[Engine], Any]) -> None:
        """Calls ``saver(engine)`` on every rank when the run stops for a preemption signal
        (``Checkpoint`` registers itself when its ``to_save`` holds this engine)."""
        if saver not in self._preemption_savers:
            self._preemption_savers.append(saver)

    def _on_preempt_signal(self, signum: int) -> None:
        # Runs between bytecodes of the main thread: only set fields that the loop reads
        # before its next agreement, never read-modify-write the agreed flags.
        self._preempt_signal = signum
        self._preempt_bit = PREEMPT

    @property
    def state_dict_user_keys(self) -> list[str]:
        return self._state_dict_user_keys

    def register_rank_state(self, key: str, obj: Any) -> None:
        """Makes ``obj.rank_state_dict()`` part of this engine's per-rank state."""
        self._rank_state.register(key, obj)

    def unregister_rank_state(self, key: str) -> None:
        self._rank_state.unregister(key)

    def rank_state_dict(self) -> dict[str, Any]:
        """This rank's RNG states and the states of registered providers (e.g. metrics)."""
        return self._rank_state.state_dict()

    def load_rank_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Loads what :meth:`rank_state_dict` returned; RNG states apply when ``run`` resumes."""
        self._rank_state.load(state_dict)

    # --- state_dict --------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict:
        """Ignite's keys (``iteration``, ``epoch_length``, ``max_epochs`` or ``max_iters``, user
        keys) plus ``seed``, the data pass and cursor; at world size 1 also ``rank_state``."""
        return build_state_dict(self)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores a run saved by :meth:`state_dict` (or an Ignite-style dict); ``run()`` then
        continues at the next batch, without fetching the batches before it."""
        apply_state_dict(self, state_dict)
        self._run_gen = None
        self._dataloader_iter = None

    # --- run ---------------------------------------------------------------------------------
    def run(
        self,
        data: Iterable | None = None,
        max_epochs: int | None = None,
        epoch_length: int | None = None,
        max_iters: int | None = None,
        seed: int | None = None,
    ) -> State:
        """Runs (or continues) over ``data``.

        A new run starts when the engine is fresh or its last run is done; otherwise the run
        continues (after ``interrupt``, ``terminate``, ``load_state_dict`` or with a larger
        ``max_epochs``). ``seed`` decides the data order; on a resumed run the saved seed
        wins and a different one raises ``ValueError``.

        Example:
            >>> Engine(lambda e, b: b).run(range(4), max_epochs=2, seed=0).epoch
            2
        """
        prepare_run(self, data, max_epochs, epoch_length, max_iters, seed)
        if self._run_gen is None:
            self._run_gen = self._loop()
        try:
            with catch_preemption(self._on_preempt_signal):
                next(self._run_gen)  # returns here only when interrupted
        except StopIteration:
            self._run_gen = None
        if getattr(self.state, "preempted", False):
            raise Preempted(self._preempt_signal, self.state.iteration)
        return self.state

    _in_epoch_loop = False
    _open_epoch = False
    _epoch_iters = 0

    def _loop(self) -> Generator[None, None, None]:
        s = self.state
        multi = idist.get_world_size() > 1
        self._flags = 0
        self.state.preempted = False
        self.should_terminate = self.should_terminate_single_epoch = self.should_interrupt = False
        s.times[Events.EPOCH_COMPLETED.name] = 0.0
        s.times[Events.COMPLETED.name] = 0.0
        self._rank_state.apply_rng()
        start_time = time.time()
        try:
            try:
                self._fire_event(Events.STARTED)
                yield from self._check(multi)
                while not self._is_done() and not self.should_terminate:
                    self._open_epoch = False
                    s.epoch += 1
                    t0 = time.time()
                    # in progress (for state_dict) from EPOCH_STARTED to the end of its batches
                    self._in_epoch_loop = True
                    self._epoch_iters = 0 if self._init_iter is None else self._init_iter
                    try:
                        self._fire_event(Events.EPOCH_STARTED)
                        yield from self._check(multi)
                        if self._dataloader_iter is None:
                            self._start_data(new_pass=False)
                        yield from self._epoch(multi)
                    finally:
                        self._in_epoch_loop = False
                    taken = time.time() - t0
                    s.times[Events.EPOCH_COMPLETED.name] = taken
                    if self.should_terminate_single_epoch != "skip_epoch_completed":
                        self._fire_event(Events.EPOCH_COMPLETED)
                        s.times[Events.EPOCH_COMPLETED.name] = time.time() - t0
                    self.should_terminate_single_epoch = False
                    yield from self._check(multi)
            except _Terminate:
                self._fire_event(Events.TERMINATE)
            except _TerminateEpoch:
                raise RuntimeError(
                    "terminate_epoch() cannot be called from STARTED or EPOCH_STARTED handlers: "
                    "there is no epoch iteration to stop yet"
                ) from None
            s.times[Events.COMPLETED.name] = time.time() - start_time
            if self.should_terminate != "skip_completed":
                self._fire_event(Events.COMPLETED)
                s.times[Events.COMPLETED.name] = time.time() - start_time
        except Exception as e:
            self._dataloader_iter = None
            self._handle_exception(e, multi)
        except BaseException as e:  # KeyboardInterrupt, GeneratorExit (run abandoned): no handlers
            self._dataloader_iter = None
            if multi and isinstance(e, KeyboardInterrupt):
                idist.notify_failure(e)
            raise
        self._dataloader_iter = None

    def _epoch(self, multi: bool) -> Generator[None, None, None]:
        # The hot loop: handler lists, events and the iterator are locals, and handlers are
        # called directly (each entry's first item takes the engine), so an iteration with
        # no handler costs a few attribute checks.
        s = self.state
        h = self._event_handlers
        ev_gbs, ev_gbc = Events.GET_BATCH_STARTED, Events.GET_BATCH_COMPLETED
        ev_its, ev_itc = Events.ITERATION_STARTED, Events.ITERATION_COMPLETED
        on_gbs, on_gbc, on_its, on_itc = h[ev_gbs], h[ev_gbc], h[ev_its], h[ev_itc]
        process = self._process_function
        dp = self._data
        has_data = s.dataloader is not None
        check_every = self.sync_check_every if multi else None
        local_checks = not multi
        counter = 0 if self._init_iter is None else self._init_iter
        self._init_iter = None
        length = s.epoch_length
        max_iters = s.max_iters
        retried = False
        it = self._dataloader_iter
        try:
            while length is None or counter < length:
                s.batch = None
                if has_data and not retried:
                    self.last_event_name = ev_gbs
                    for entry in on_gbs:
                        entry[0](self)
                    if self._flags and local_checks:
                        yield from self._act()
                try:
                    s.batch = next(it)
                except StopIteration:
                    if length is None:
                        if counter == 0:
                            raise ValueError(
                                "The data is empty: expected at least one batch per epoch"
                            ) from None
                        s.epoch_length = length = counter
                        if max_iters is not None:
                            s.max_epochs = math.ceil(max_iters / counter)
                        break
                    if retried:
                        warnings.warn(
                            "The data cannot provide more batches but the run is not done "
                            f"(iteration {s.iteration}): ending the run",
                            stacklevel=2,
                        )
                        if multi:  # end every rank at the same point: an agreed terminate
                            self._flags = idist.agree_flags(self._flags | TERMINATE)
                            yield from self._act()
                        self.should_terminate = True  # ends the run after this epoch, like Ignite
                        break
                    self._start_data(new_pass=True, fire_stop=has_data)
                    it = self._dataloader_iter
                    if self._flags and local_checks:
                        yield from self._act()
                    retried = True
                    continue
                retried = False
                dp.batches += 1
                if dp.batches > dp.padding_first:
                    s.batch_padding = dp.sampler.padding_in_batch(dp.batches - 1)
                s.output = None
                if has_data:
                    self.last_event_name = ev_gbc
                    for entry in on_gbc:
                        entry[0](self)
                    if self._flags and local_checks:
                        yield from self._act()
                counter += 1
                self._epoch_iters = counter
                s.iteration += 1
                self.last_event_name = ev_its
                for entry in on_its:
                    entry[0](self)
                if self._flags and local_checks:
                    yield from self._act()
                s.output = process(self, s.batch)
                self.last_event_name = ev_itc
                for entry in on_itc:
                    entry[0](self)
                if multi:
                    if check_every and s.iteration % check_every == 0:
                        self._sync_check()
                    self._flags = idist.agree_flags(self._flags | self._preempt_bit)
                elif self._preempt_bit:
                    self._flags |= self._preempt_bit
                if self._flags:
                    yield from self._act()
                if max_iters is not None and s.iteration == max_iters:
                    self.should_terminate = True
                    raise _Terminate()
        except _TerminateEpoch:
            self._fire_event(Events.TERMINATE_SINGLE_EPOCH)
            self._start_data(new_pass=True)

    def _check(self, multi: bool) -> Generator[None, None, None]:
        if multi:
            self._flags = idist.agree_flags(self._flags | self._preempt_bit)
        else:
            self._flags |= self._preempt_bit
        if self._flags:
            yield from self._act()

    def _act(self) -> Generator[None, None, None]:
        flags = self._flags
        if flags & PREEMPT:
            self._flags = self._preempt_bit = 0
            self.state.preempted = True
            for saver in self._preemption_savers:
                saver(self)
            self.should_terminate = "skip_completed"
            raise _Terminate()
        if flags & TERMINATE:
            self.should_terminate = "skip_completed" if flags & SKIP_COMPLETED else True
            raise _Terminate()
        if flags & TERMINATE_EPOCH:
            self._flags &= ~(TERMINATE_EPOCH | SKIP_EPOCH_COMPLETED)
            if flags & SKIP_EPOCH_COMPLETED:
                self.should_terminate_single_epoch = "skip_epoch_completed"
            else:
                self.should_terminate_single_epoch = True
            raise _TerminateEpoch()
        if flags & INTERRUPT:
            self._flags &= ~INTERRUPT
            self._fire_event(Events.INTERRUPT)
            self.should_interrupt = False
            yield

    def _start_data(self, new_pass: bool, fire_stop: bool = False) -> None:
        if fire_stop:
            self._fire_event(Events.DATALOADER_STOP_ITERATION)
        self.state.batch_padding = 0
        self._dataloader_iter = self._data.start(self.state.seed, self.state.epoch_length, new_pass)

    def _sync_check(self) -> None:
        s, dp = self.state, self._data
        digest = dp.sampler.global_batch_digest(dp.batches - 1) if dp.sampler is not None else 0
        idist.check_in_sync(
            (s.epoch, s.iteration, dp.index, digest),
            ("epoch", "iteration", "data pass", "batch index digest"),
        )

    def _is_done(self) -> bool:
        if self._open_epoch:  # resumed after an epoch's last iteration: its end is still due
            return False
        s = self.state
        if s.max_iters is not None and s.iteration >= s.max_iters:
            return True
        if s.max_epochs is None:
            return False
        if s.epoch_length is not None and s.iteration >= s.epoch_length * s.max_epochs:
            return True
        return s.epoch >= s.max_epochs

    def _handle_exception(self, e: Exception, multi: bool) -> None:
        if multi:
            idist.notify_failure(e)
        if not self._event_handlers.get(Events.EXCEPTION_RAISED):
            raise e
        self._fire_event(Events.EXCEPTION_RAISED, e)
        if multi:
            raise e  # peers cannot continue without this rank: a handler cannot swallow it
