"""The Engine: one run loop, Ignite's event order, rank agreement and exact resume."""

from __future__ import annotations

import enum
import logging
import math
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import Any

from distengine import distributed as idist
from distengine.engine.datapass import data_length
from distengine.engine.events import Events
from distengine.engine.preemption import Preempted, catch_preemption
from distengine.engine.progress import RunPosition, check_limit_reached, check_position_dict
from distengine.engine.rank_state import RankState
from distengine.engine.registry import EventRegistry
from distengine.engine.run_setup import (
    agree_on_run,
    check_process_function,
    check_run_arguments,
)
from distengine.engine.running import running
from distengine.engine.state import State

__all__ = ["Engine", "Stop"]


class Stop(enum.IntFlag):
    """Stop requests, OR-ed across ranks once per iteration (see ``docs/internals.md``).

    A request made on any rank is acted upon on every rank after the same iteration (at
    world size > 1 one iteration later than it was made, see :class:`Engine`); at world
    size 1 it is acted upon right after the event that made it.
    """

    TERMINATE = 1
    TERMINATE_EPOCH = 2
    INTERRUPT = 4
    SKIP_COMPLETED = 8
    PREEMPT = 16
    SKIP_EPOCH_COMPLETED = 32
    EXHAUSTED = 64  # the data cannot provide more batches: the run ends after this epoch


_NONE = Stop(0)


class _Terminate(Exception):  # noqa: N818 - control flow, not an error
    pass


class _TerminateEpoch(Exception):  # noqa: N818
    pass


class _Exhausted(Exception):  # noqa: N818
    pass


class Engine(EventRegistry):
    """Runs ``process_function(engine, batch)`` over data for epochs, firing events.

    At world size > 1, ``terminate``/``terminate_epoch``/``interrupt`` requested on any
    rank take effect on every rank after the same iteration, and an exception on any rank
    ends the job on every rank. The ranks agree on requests in one small collective per
    iteration, overlapped with the next iteration: a request made during iteration ``i``
    takes effect at the end of iteration ``i + 1`` (at the end of ``i`` itself when ``i``
    is the last iteration of its epoch or of the run, or when requests of ``i - 1`` take
    effect then); requests made in ``STARTED``, ``EPOCH_STARTED`` and ``EPOCH_COMPLETED``
    handlers take effect right after them. With ``overlap_agreement = False`` every
    request takes effect at the end of its own iteration, at the price of one blocking
    collective per iteration. At world size 1 a request takes effect right after the
    event that made it, as in Ignite.

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

    #: Ignite's switch: with ``False``, ``interrupt()`` raises ``RuntimeError``.
    interrupt_resume_enabled = True
    #: At world size > 1, agree on stop requests in the background of the next iteration
    #: (``True``: requests take effect one iteration later, no extra lockstep point) or at
    #: the end of each iteration (``False``: one blocking collective per iteration). Read
    #: when an epoch starts.
    overlap_agreement = True

    def __init__(
        self, process_function: Callable[[Engine, Any], Any], *, sync_check_every: int | None = None
    ):
        check_process_function(process_function, sync_check_every)
        self._state = State()
        super().__init__()
        self._process_function = process_function
        self.sync_check_every = sync_check_every
        self.logger = logging.getLogger(__name__ + "." + self.__class__.__name__)
        self._stop = _NONE  # requests made (and, at world size > 1, agreed) in this run
        self._pending: Any = None  # the overlapped agreement (anything with wait() -> int)
        self._channel: idist.AgreementChannel | None = None  # this run's agreements
        self._state_dict_user_keys: list[str] = []
        self._rank_state = RankState()
        self._pos = RunPosition(self.state)
        self._dataloader_iter: Any = None
        self._internal_run_generator: Generator | None = None
        self._preemption_savers: list[Callable[[Engine], Any]] = []
        self._preempt_signal: int | None = None
        self._preempt_bit = _NONE  # set by the signal handler; only cleared when acted upon
        self._rng_restored = False  # this run started from loaded RNG states
        self._extensions: dict[str, Any] = {}  # see extension()
        idist.register_status_provider(self._status)  # weakly: for hang reports

    def _status(self) -> dict[str, Any]:
        """Where this engine is (read by the hang watchdog's thread)."""
        ev, s = self.last_event_name, self.state
        if ev is None:
            return {}
        name = getattr(self._process_function, "__name__", type(self).__name__)
        ev = getattr(ev, "name", ev)
        return {"engine": name, "epoch": s.epoch, "iteration": s.iteration, "last_event": ev}

    @property
    def state(self) -> State:
        """The run's :class:`State` (Ignite code may replace it: the position follows)."""
        return self._state

    @state.setter
    def state(self, state: State) -> None:
        self._state = state
        pos = getattr(self, "_pos", None)
        if pos is not None:
            pos.state = state

    # --- stop requests -----------------------------------------------------------------------
    def terminate(self, skip_completed: bool = False) -> None:
        """Stops the run after the current iteration (or epoch-level event); fires
        ``TERMINATE`` then ``COMPLETED`` (unless ``skip_completed``).

        ``state_dict()`` then records the exact position: loading it into an engine and
        calling ``run`` continues with the next batch. Calling ``run()`` again on this
        engine follows Ignite instead: the next epoch starts, on a new data pass.
        """
        self._stop |= Stop.TERMINATE | (Stop.SKIP_COMPLETED if skip_completed else _NONE)

    def terminate_epoch(self, skip_epoch_completed: bool = False) -> None:
        """Ends the current epoch after the current iteration; the run goes on with the next
        epoch, on a new data pass."""
        self._stop |= Stop.TERMINATE_EPOCH | (
            Stop.SKIP_EPOCH_COMPLETED if skip_epoch_completed else _NONE
        )

    def interrupt(self) -> None:
        """Pauses the run after the current iteration; ``run()`` again continues from there.

        Raises:
            RuntimeError: ``Engine.interrupt_resume_enabled`` is ``False``.
        """
        if not self.interrupt_resume_enabled:
            raise RuntimeError(
                "Engine 'interrupt/resume' feature is disabled: set "
                "Engine.interrupt_resume_enabled = True to use interrupt()"
            )
        self._stop |= Stop.INTERRUPT

    @property
    def should_terminate(self) -> bool | str:
        """``True`` (or ``"skip_completed"``) once ``terminate`` was requested (Ignite's flag)."""
        if not self._stop & Stop.TERMINATE:
            return False
        return "skip_completed" if self._stop & Stop.SKIP_COMPLETED else True

    @should_terminate.setter
    def should_terminate(self, value: bool | str) -> None:
        self._stop &= ~(Stop.TERMINATE | Stop.SKIP_COMPLETED)
        if value:
            self.terminate(skip_completed=value == "skip_completed")

    @property
    def should_terminate_single_epoch(self) -> bool | str:
        """``True`` (or ``"skip_epoch_completed"``) once ``terminate_epoch`` was requested."""
        if not self._stop & Stop.TERMINATE_EPOCH:
            return False
        return "skip_epoch_completed" if self._stop & Stop.SKIP_EPOCH_COMPLETED else True

    @should_terminate_single_epoch.setter
    def should_terminate_single_epoch(self, value: bool | str) -> None:
        self._stop &= ~(Stop.TERMINATE_EPOCH | Stop.SKIP_EPOCH_COMPLETED)
        if value:
            self.terminate_epoch(skip_epoch_completed=value == "skip_epoch_completed")

    @property
    def should_interrupt(self) -> bool:
        """Whether ``interrupt`` was requested and not yet acted upon."""
        return bool(self._stop & Stop.INTERRUPT)

    @should_interrupt.setter
    def should_interrupt(self, value: bool) -> None:
        self._stop &= ~Stop.INTERRUPT
        if value:
            self._stop |= Stop.INTERRUPT

    def register_preemption_saver(self, saver: Callable[[Engine], Any]) -> None:
        """Calls ``saver(engine)`` on every rank when the run stops for a preemption signal
        (``Checkpoint`` registers itself when its ``to_save`` holds this engine)."""
        if saver not in self._preemption_savers:
            self._preemption_savers.append(saver)

    def _on_preempt_signal(self, signum: int) -> None:
        # Runs between bytecodes of the main thread: only set fields that the loop reads
        # before its next agreement, never read-modify-write the agreed flags.
        self._preempt_signal = signum
        self._preempt_bit = Stop.PREEMPT

    # --- per-rank state ----------------------------------------------------------------------
    @property
    def state_dict_user_keys(self) -> list[str]:
        return self._state_dict_user_keys

    def register_rank_state(self, key: str, obj: Any) -> None:
        """Makes ``obj.rank_state_dict()`` part of this engine's per-rank state."""
        self._rank_state.register(key, obj)

    def unregister_rank_state(self, key: str) -> None:
        self._rank_state.unregister(key)

    # --- extensions ----------------------------------------------------------------------------
    def extension(self, key: str, factory: Callable[[Engine], Any] | None = None) -> Any:
        """The object a package built on the engine keeps for this engine's lifetime.

        A package above the engine that needs one helper object per engine (the metrics
        reducer of :meth:`Metric.attach <distengine.metrics.Metric.attach>`) keeps it here
        under its own ``key`` rather than as an attribute set on the engine from outside.
        The first request with a ``factory`` creates it (``factory(engine)``); later ones
        return the same object. The object lives as long as the engine.

        Args:
            key: the owner's name for it (e.g. ``"distengine.metrics"``).
            factory: called with the engine to create the object when there is none yet.

        Returns:
            The object, or ``None`` when there is none and no ``factory`` was given.

        Raises:
            TypeError: ``key`` is not a str or ``factory`` is not callable.

        Example:
            >>> engine = Engine(lambda engine, batch: batch)
            >>> engine.extension("demo") is None
            True
            >>> counter = engine.extension("demo", lambda eng: {"saves": 0})
            >>> engine.extension("demo") is counter
            True
        """
        if not isinstance(key, str):
            raise TypeError(f"extension key must be a str, got {type(key).__name__}")
        found = self._extensions.get(key)
        if found is None and factory is not None:
            if not callable(factory):
                raise TypeError(f"extension factory must be callable, got {type(factory).__name__}")
            found = self._extensions[key] = factory(self)
        return found

    def rank_state_dict(self) -> dict[str, Any]:
        """This rank's RNG states and the states of registered providers (e.g. metrics)."""
        return self._rank_state.state_dict()

    def load_rank_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Loads what :meth:`rank_state_dict` returned; RNG states apply when ``run`` resumes."""
        self._rank_state.load(state_dict)

    # --- state_dict --------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict:
        """Returns the run's position and what resuming it needs.

        Ignite's keys (``iteration``, ``epoch_length``, ``max_epochs`` or ``max_iters``, the
        user keys) plus ``seed``, ``run_id``, the data pass, the cursor, the epoch state and
        the data's shape; at world size 1 also ``rank_state``. ``iteration`` counts the
        iterations whose process function returned, so a state taken in the middle of an
        iteration resumes by running it again.
        """
        s = self.state
        position = self._pos.state_dict()
        sd: OrderedDict = OrderedDict(iteration=position.pop("iteration"))
        sd["epoch_length"] = s.epoch_length
        if s.max_iters is not None:
            sd["max_iters"] = s.max_iters
        else:
            sd["max_epochs"] = s.max_epochs
        for k in self._state_dict_user_keys:
            sd[k] = getattr(s, k)
        sd["seed"] = s.seed
        sd["run_id"] = s.run_id
        sd.update(position)
        sd["world_size"] = idist.get_world_size()
        if sd["world_size"] == 1:
            sd["rank_state"] = self.rank_state_dict()
        return sd

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Positions the engine where ``state_dict`` was taken (ours, or Ignite's form).

        ``run()`` then continues with the next batch, without fetching the batches before
        it. A finished position does not start a new run: ``run`` returns at once with a
        warning (raise ``max_epochs``/``max_iters`` to train further).

        Raises:
            TypeError, ValueError: a key is missing or malformed (the message names it).
        """
        sd = check_position_dict(state_dict, self._state_dict_user_keys)
        s = self.state
        for k in self._state_dict_user_keys:
            setattr(s, k, sd[k])
        s.epoch_length = sd["epoch_length"]
        s.max_epochs, s.max_iters = sd.get("max_epochs"), sd.get("max_iters")
        s.seed = sd.get("seed")
        s.run_id = sd.get("run_id")
        self._pos.load_state_dict(sd)
        # per-rank RNG streams only map onto the same world size
        if "rank_state" in sd and sd.get("world_size", 1) == idist.get_world_size():
            self.load_rank_state_dict(sd["rank_state"])
        self._stop = _NONE
        self._pending = None
        self._internal_run_generator = None
        self._dataloader_iter = None

    # --- data ----------------------------------------------------------------------------------
    def set_data(self, data: Iterable) -> None:
        """Switches the run to ``data``: the next batch comes from it, on a new data pass
        (the epoch length is kept).

        Example:
            >>> engine = Engine(lambda e, b: b)
            >>> _ = engine.add_event_handler(Events.ITERATION_COMPLETED(once=2),
            ...                              lambda e: e.set_data([10, 20, 30]))
            >>> engine.run([1, 2, 3], max_epochs=1).output
            10
        """
        if not isinstance(data, Iterable):
            raise TypeError(f"Argument data must be iterable, got {type(data).__name__}")
        self.state.dataloader = data
        self._pos.data.bind(data)
        if self._dataloader_iter is not None:  # running: switch now
            self._dataloader_iter = self._pos.data.start(
                self.state.seed, self.state.epoch_length, new_pass=True
            )

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

        A new run starts when the engine is fresh, or when its last run in this process is
        done (Ignite's rule); otherwise the run continues: after ``interrupt``, after an
        exception, after ``load_state_dict`` (at the next batch), after ``terminate`` (at the
        next epoch, as in Ignite), or with a larger ``max_epochs``. A finished state loaded
        with ``load_state_dict`` is not restarted: ``run`` warns and returns. ``seed``
        decides the data order (default: ``torch.initial_seed()``); on a continued run the
        saved seed wins and a different one raises ``ValueError``.

        The loop below. *Requests* are ``terminate()``, ``terminate_epoch()``,
        ``interrupt()``, a preemption signal and data that ran dry; *agree* (world size > 1)
        is one small collective on every rank that ORs the requests of all ranks, after
        which every rank *acts* on them at the same point. At world size 1 there is nothing
        to agree on: a request acts right after the event that made it (one made in the
        process function: after ``ITERATION_COMPLETED``). A loaded state (``load_state_dict``) or a run continued after an interruption
        or an exception picks up where marked ``[resume]``::

            restore this rank's RNG states                   # [resume] the loaded ones
            STARTED;         agree (blocking), act
            while the run is not done:                      # max_epochs, max_iters
                epoch += 1                                  # [resume] an open epoch: the same
                                                            #   epoch again, its done iterations
                                                            #   counted, not rerun
                EPOCH_STARTED;   agree (blocking), act
                start the data pass if none is open         # [resume] the saved pass, from its
                                                            #   cursor: earlier batches unread
                while this epoch's iterations < epoch_length:
                    GET_BATCH_STARTED
                    batch = next(data)                      # pass ended inside the epoch:
                                                            #   DATALOADER_STOP_ITERATION, next
                                                            #   pass (pass number + 1, new
                                                            #   permutation), fetch again; that
                                                            #   one empty too: data exhausted
                    GET_BATCH_COMPLETED
                    iteration += 1; ITERATION_STARTED
                    output = process_function(engine, batch)
                    position += 1 batch                     # the cursor += the global batch
                                                            #   (state_dict counts it from here)
                    ITERATION_COMPLETED
                    sync check (every sync_check_every iterations)
                    agree:                                  # overlapped: start this iteration's
                                                            #   agreement in the background, act
                                                            #   on the previous iteration's one
                                                            #   (so a request made in iteration i
                                                            #   acts at the end of i + 1); at the
                                                            #   epoch's or the run's last
                                                            #   iteration, or when the previous
                                                            #   one holds a request: blocking, on
                                                            #   everything requested so far
                    max_iters reached inside the epoch -> TERMINATE, COMPLETED
                EPOCH_COMPLETED; agree (blocking), act
            COMPLETED

            # acting on:  terminate -> TERMINATE, COMPLETED;  terminate_epoch ->
            # TERMINATE_SINGLE_EPOCH, EPOCH_COMPLETED (the next epoch starts a new pass);
            # interrupt -> INTERRUPT, run() returns (a later run() continues);  data
            # exhausted -> the epoch ends, then COMPLETED;  preemption -> savers, TERMINATE,
            # Preempted raised (exit status 75);  an exception -> EXCEPTION_RAISED (and
            # re-raised at world size > 1)

        With ``overlap_agreement = False`` every per-iteration agreement is blocking: a
        request acts at the end of its own iteration. ``docs/internals.md`` ("The
        agreement") gives the exact rule and ``docs/contracts.md`` what it guarantees.

        Example:
            >>> Engine(lambda e, b: b).run(range(4), max_epochs=2, seed=0).epoch
            2
        """
        check_run_arguments(data, max_epochs, epoch_length, max_iters, seed)
        if not self._prepare(data, max_epochs, epoch_length, max_iters, seed):
            return self.state
        if self._internal_run_generator is None:
            self._internal_run_generator = self._loop()
        try:
            with catch_preemption(self._on_preempt_signal), running(self):
                next(self._internal_run_generator)  # returns here only when interrupted
        except StopIteration:
            self._internal_run_generator = None
        except BaseException:
            # the loop ended with the exception: a later run() continues the run
            self._internal_run_generator = None
            raise
        if self.state.preempted:
            raise Preempted(self._preempt_signal, self.state.iteration)
        return self.state

    def _prepare(
        self,
        data: Iterable | None,
        max_epochs: int | None,
        epoch_length: int | None,
        max_iters: int | None,
        seed: int | None,
    ) -> bool:
        """Decides between a new run and a continuation; ``False``: nothing to run."""
        s, pos = self.state, self._pos
        if max_iters is not None and s.max_epochs is not None and s.max_iters is None:
            raise ValueError(
                "To switch from max_epochs to max_iters mode during resume, you must first reset "
                "by setting 'engine.state.max_epochs = None' before calling run()."
            )
        if max_epochs is not None and s.max_iters is not None:
            raise ValueError(
                "To switch from max_iters to max_epochs mode during resume, you must first reset "
                "by setting 'engine.state.max_iters = None' before calling run()."
            )
        if self._internal_run_generator is None and pos.terminated and not pos.loaded:
            pos.continue_after_terminate()  # Ignite: the next epoch, on a new data pass
        if s.max_iters is not None:
            self._check_and_set_max_iters(max_iters)
            if s.max_epochs is not None and s.epoch_length:  # derived from max_iters (no len)
                s.max_epochs = math.ceil(s.max_iters / s.epoch_length)
        elif s.max_epochs is not None:
            self._check_and_set_max_epochs(max_epochs)

        fresh = s.max_epochs is None and s.max_iters is None
        if not fresh and pos.is_done() and self._internal_run_generator is None:
            if pos.loaded:
                warnings.warn(
                    f"The loaded state is a finished run (iteration {s.iteration}, epoch "
                    f"{s.epoch} of max_epochs={s.max_epochs}, max_iters={s.max_iters}): nothing "
                    "to run. Pass a larger max_epochs (or max_iters) to run() to train further, "
                    "or set engine.state.max_epochs = None before run() to start a new run",
                    stacklevel=3,
                )
                return False
            fresh = True
        if fresh:
            self._new_run(data, max_epochs, epoch_length, max_iters, seed)
        else:
            self._continue_run(data, epoch_length, seed)
        if self._dataloader_iter is None:
            s.dataloader = data
            pos.data.bind(data)
            if pos.loaded:
                pos.data.check_shape(explicit_epoch_length=epoch_length is not None)
        return True

    def _check_and_set_max_epochs(self, max_epochs: int | None) -> None:
        """Sets ``state.max_epochs`` if given and not below the epochs already done."""
        if max_epochs is not None:
            done = self.state.epoch - (1 if self._pos.epoch_open else 0)
            check_limit_reached("max_epochs", max_epochs, done, "epoch")
            self.state.max_epochs = max_epochs

    def _check_and_set_max_iters(self, max_iters: int | None) -> None:
        """Sets ``state.max_iters`` if given and not below the iterations already done."""
        if max_iters is not None:
            check_limit_reached(
                "max_iters", max_iters, self._pos.completed_iteration(), "iteration"
            )
            self.state.max_iters = max_iters

    def _new_run(
        self,
        data: Iterable | None,
        max_epochs: int | None,
        epoch_length: int | None,
        max_iters: int | None,
        seed: int | None,
    ) -> None:
        s = self.state
        if data is None and epoch_length is None and s.epoch_length is None:
            raise ValueError("epoch_length should be provided if data is None")
        if epoch_length is None:  # the data's length, else the state's (as Ignite)
            epoch_length = data_length(data) if data is not None else None
            if epoch_length is None:
                epoch_length = s.epoch_length
        if epoch_length is not None and epoch_length < 1:
            raise ValueError(
                f"Input data has zero size. Please provide non-empty data (got {epoch_length} batches)"
            )
        if max_iters is None and max_epochs is None:
            max_epochs = 1
        self._pos.restart()
        s.max_epochs = None if max_iters is not None else max_epochs
        s.max_iters = max_iters
        s.epoch_length = epoch_length
        s.seed, s.run_id = agree_on_run(seed, epoch_length)
        self._internal_run_generator = None
        self._dataloader_iter = None

    def _continue_run(
        self, data: Iterable | None, epoch_length: int | None, seed: int | None
    ) -> None:
        s = self.state
        if s.epoch_length is not None:
            if epoch_length is not None and epoch_length != s.epoch_length:
                raise ValueError(
                    "Argument epoch_length should be same as in the state, but given "
                    f"{epoch_length} vs {s.epoch_length}"
                )
        else:
            if epoch_length is None and data is not None:
                epoch_length = data_length(data)
            if epoch_length is not None:
                s.epoch_length = epoch_length
        if s.epoch_length is None and data is None:
            raise ValueError("epoch_length should be provided if data is None")
        if seed is not None and s.seed is not None and seed != s.seed:
            raise ValueError(
                f"This run continues a run with seed {s.seed}: got seed={seed}. The saved seed "
                "decides the data order; pass the same seed or none"
            )
        if s.seed is None or s.run_id is None:
            agreed, run_id = agree_on_run(seed if s.seed is None else s.seed, s.epoch_length)
            s.seed = agreed
            s.run_id = s.run_id or run_id
        if self._internal_run_generator is None:
            self._pos.reenter_open_epoch()  # after an exception or a preemption

    # --- the loop ----------------------------------------------------------------------------
    def _loop(self) -> Generator[None, None, None]:
        s, pos = self.state, self._pos
        multi = idist.get_world_size() > 1
        self._stop = _NONE
        self._pending = None
        # the run's overlapped agreements (riding on a CPU DDP model's gradient all-reduce
        # while its backward passes carry them; see distributed/agreement.py)
        self._channel = idist.AgreementChannel() if multi else None
        s.preempted = False
        pos.loaded = pos.terminated = False
        s.times[Events.EPOCH_COMPLETED.name] = 0.0
        s.times[Events.COMPLETED.name] = 0.0
        self._rng_restored = self._rank_state.apply_rng()
        start_time = time.time()
        try:
            try:
                self._fire_event(Events.STARTED)
                yield from self._check(multi)
                while not pos.is_done():
                    done_before = pos.begin_epoch()
                    t0 = time.time()
                    self._fire_event(Events.EPOCH_STARTED)
                    yield from self._check(multi)
                    if self._dataloader_iter is None:
                        self._start_data(new_pass=False)
                    exhausted = yield from self._epoch(multi, done_before)
                    pos.end_epoch()
                    s.times[Events.EPOCH_COMPLETED.name] = time.time() - t0
                    if not self._stop & Stop.SKIP_EPOCH_COMPLETED:
                        self._fire_event(Events.EPOCH_COMPLETED)
                        s.times[Events.EPOCH_COMPLETED.name] = time.time() - t0
                    self._stop &= ~(Stop.TERMINATE_EPOCH | Stop.SKIP_EPOCH_COMPLETED)
                    yield from self._check(multi)
                    if exhausted:
                        break
            except _Terminate:
                self._fire_event(Events.TERMINATE)
            except _TerminateEpoch:
                raise RuntimeError(
                    "terminate_epoch() cannot be called from STARTED or EPOCH_STARTED handlers: "
                    "there is no epoch iteration to stop yet"
                ) from None
            s.times[Events.COMPLETED.name] = time.time() - start_time
            if not self._stop & Stop.SKIP_COMPLETED:
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

    def _epoch(self, multi: bool, done_before: int) -> Generator[None, None, bool]:
        # The hot loop: handler lists, events and the iterator are locals, and handlers are
        # called directly (each entry's first item takes the engine), so an iteration with
        # no handler costs a few attribute checks. A subclass that overrides _fire_event
        # gets every event through it instead (decided once per epoch).
        s, pos = self.state, self._pos
        dp = pos.data
        h = self._event_handlers
        ev_gbs, ev_gbc = Events.GET_BATCH_STARTED, Events.GET_BATCH_COMPLETED
        ev_its, ev_itc = Events.ITERATION_STARTED, Events.ITERATION_COMPLETED
        on_gbs, on_gbc, on_its, on_itc = h[ev_gbs], h[ev_gbc], h[ev_its], h[ev_itc]
        custom_fire = type(self)._fire_event is not EventRegistry._fire_event
        process = self._process_function
        has_data = s.dataloader is not None
        check_every = self.sync_check_every if multi else None
        local_checks = not multi
        overlap = multi and self.overlap_agreement
        start_agreement = self._channel.start if multi else idist.start_agreement
        counter = done_before
        length = s.epoch_length
        max_iters = s.max_iters
        retried = False  # the previous next() ended a pass and a new pass was started
        try:
            while length is None or counter < length:
                s.batch = None
                if has_data and not retried:
                    if custom_fire:
                        self._fire_event(ev_gbs)
                    else:
                        self.last_event_name = ev_gbs
                        for entry in on_gbs:
                            entry[0](self)
                    if self._stop and local_checks:
                        yield from self._act()
                try:
                    s.batch = next(self._dataloader_iter)  # not a local: set_data may switch it
                except StopIteration:
                    # The data ran out before the epoch's end. Three cases: (1) data without
                    # len, first pass: its end is the epoch's end (the epoch length is learnt
                    # here); (2) ``retried``: the pass started just below after the previous
                    # one ended yields nothing either, so the data is exhausted (an empty
                    # iterable, or an iterator that cannot start again); (3) otherwise the
                    # pass ended inside the epoch: start the next pass and fetch again, with
                    # ``retried`` set so that this fetch's GET_BATCH_STARTED (already fired)
                    # does not fire twice and an empty next pass ends the run instead of
                    # being restarted forever.
                    if length is None:  # the first pass of data without len: its end is the epoch's
                        if counter == 0:
                            raise ValueError(
                                "The data is empty: expected at least one batch per epoch"
                            ) from None
                        s.epoch_length = length = counter
                        if max_iters is not None:
                            s.max_epochs = math.ceil(max_iters / counter)
                        break
                    if retried:  # a fresh pass that yields nothing: the data is exhausted
                        warnings.warn(
                            "Data iterator can not provide data anymore but the run is not done "
                            f"(iteration {s.iteration}): the run ends after this epoch",
                            stacklevel=2,
                        )
                        # every rank ends the epoch at the same point, then the run
                        self._stop |= Stop.EXHAUSTED
                        if multi:
                            # A rank with data left is running this iteration and agrees at
                            # its end like every iteration: join that collective and, when
                            # it is overlapped there, the one that rank reads it in.
                            pending = self._pending
                            overlapped = (
                                overlap
                                and counter + 1 != length
                                and s.iteration + 1 != max_iters
                                and (pending is None or not pending.wait())
                            )
                            self._agree()
                            if overlapped:
                                self._agree()
                        yield from self._act()
                    # The pass ended inside the epoch (epoch_length > batches per pass, or a
                    # pass resumed at its end): start the next pass and fetch again; the
                    # GET_BATCH_STARTED already fired belongs to that fetch.
                    self._start_data(new_pass=True, fire_stop=has_data)
                    if self._stop and local_checks:
                        yield from self._act()
                    retried = True
                    continue
                retried = False
                k = dp.batches  # this batch's index in the pass
                if k >= dp.irregular_from:
                    _, s.batch_padding, s.batch_loss_scale = dp.sampler.batch_geometry(k)
                s.output = None
                if has_data:
                    if custom_fire:
                        self._fire_event(ev_gbc)
                    else:
                        self.last_event_name = ev_gbc
                        for entry in on_gbc:
                            entry[0](self)
                    if self._stop and local_checks:
                        yield from self._act()
                s.iteration += 1
                if custom_fire:
                    self._fire_event(ev_its)
                else:
                    self.last_event_name = ev_its
                    for entry in on_its:
                        entry[0](self)
                if self._stop and local_checks:
                    yield from self._act()
                s.output = process(self, s.batch)
                counter += 1
                pos.epoch_iters = counter
                dp.batches = k + 1
                if custom_fire:
                    self._fire_event(ev_itc)
                else:
                    self.last_event_name = ev_itc
                    for entry in on_itc:
                        entry[0](self)
                if multi:
                    if check_every and s.iteration % check_every == 0:
                        self._sync_check()
                    pending = self._pending
                    if (
                        overlap
                        and counter != length
                        and s.iteration != max_iters
                        and (pending is None or not pending.wait())
                    ):
                        # Overlapped: the requests made up to here are read at the end of
                        # the next iteration (the same decision on every rank: the pending
                        # result is agreed, the epoch's length and max_iters are shared).
                        self._pending = start_agreement(self._stop | self._preempt_bit)
                        continue
                    self._agree()
                elif self._preempt_bit:
                    self._stop |= self._preempt_bit
                if self._stop:
                    yield from self._act()
                if max_iters is not None and s.iteration == max_iters and counter != length:
                    raise _Terminate()  # at an epoch's end the epoch completes, then the run
        except _TerminateEpoch:
            # the epoch is over from here on (a state taken now resumes with the next epoch,
            # on a new data pass); its EPOCH_COMPLETED still follows unless skipped
            pos.end_epoch()
            dp.abandon_pass()
            self._dataloader_iter = None
            self._fire_event(Events.TERMINATE_SINGLE_EPOCH)
        except _Exhausted:
            self._stop &= ~Stop.EXHAUSTED
            return True
        return False

    def _check(self, multi: bool) -> Generator[None, None, None]:
        if multi:
            self._agree()
        else:
            self._stop |= self._preempt_bit
        if self._stop:
            yield from self._act()

    def _agree(self) -> None:
        """Blocking: every rank's requests so far, the overlapped agreement's included."""
        pending, self._pending = self._pending, None
        agreed = pending.wait() if pending is not None else 0
        self._stop = Stop(agreed | idist.agree_flags(self._stop | self._preempt_bit))

    def _act(self) -> Generator[None, None, None]:
        stop = self._stop
        if stop & Stop.PREEMPT:
            self._stop &= ~Stop.PREEMPT
            self._preempt_bit = _NONE
            self.state.preempted = True
            for saver in self._preemption_savers:
                saver(self)
            self._stop |= Stop.TERMINATE | Stop.SKIP_COMPLETED
            raise _Terminate()
        if stop & Stop.TERMINATE:
            self._pos.terminated = True
            raise _Terminate()
        if stop & Stop.EXHAUSTED:
            raise _Exhausted()
        if stop & Stop.TERMINATE_EPOCH:
            raise _TerminateEpoch()
        if stop & Stop.INTERRUPT:
            self._stop &= ~Stop.INTERRUPT
            self._fire_event(Events.INTERRUPT)
            yield

    def _start_data(self, new_pass: bool, fire_stop: bool = False) -> None:
        s = self.state
        if fire_stop:
            self._fire_event(Events.DATALOADER_STOP_ITERATION)
            if s.dataloader is not self._pos.data.data:  # a handler switched the data
                self._pos.data.bind(s.dataloader)
        s.batch_padding, s.batch_loss_scale = 0, 1.0
        self._dataloader_iter = self._pos.data.start(
            s.seed, s.epoch_length, new_pass, self._pass_hook
        )

    #: called by the data pass just before each pass's iterator is created, as
    #: ``hook(data, data_pass, skip_batches) -> (after, skipped)``; ``None`` here
    #: (``DeterministicEngine`` reseeds the global RNGs there)
    _pass_hook: Any = None

    def _sync_check(self) -> None:
        s, dp = self.state, self._pos.data
        digest = dp.sampler.global_batch_digest(dp.batches - 1) if dp.sampler is not None else 0
        idist.check_in_sync(
            (s.epoch, s.iteration, dp.number, digest),
            ("epoch", "iteration", "data pass", "batch index digest"),
        )

    @staticmethod
    def _is_done(state: State) -> bool:
        """Ignite's rule on counters alone (``max_iters`` or ``max_epochs`` reached); the run
        loop asks the run position instead, which also knows about an open epoch."""
        if state.max_iters is not None and state.iteration >= state.max_iters:
            return True
        if state.max_epochs is None:
            return False
        if (
            state.epoch_length is not None
            and state.iteration >= state.epoch_length * state.max_epochs
        ):
            return True
        return state.epoch >= state.max_epochs

    def _handle_exception(self, e: Exception, multi: bool) -> None:
        if multi:
            idist.notify_failure(e)
        if not self._event_handlers.get(Events.EXCEPTION_RAISED):
            raise e
        self._fire_event(Events.EXCEPTION_RAISED, e)
        if multi:
            raise e  # peers cannot continue without this rank: a handler cannot swallow it
