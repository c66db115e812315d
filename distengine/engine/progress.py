"""Where a run stands: the one object that owns the run position.

A saved engine state is a *position*: loading it and calling ``run`` continues with the
next batch, whatever stopped the run (``terminate``, ``terminate_epoch``, ``interrupt``,
preemption, an exception, a crash). :class:`RunPosition` owns that position:

- the epoch and iteration counters (kept on :class:`~distengine.engine.State` as
  ``state.epoch`` and ``state.iteration``, where Ignite's handlers read them; this class is
  their only writer besides the run loop's per-iteration increment);
- whether an epoch is *open* (started, its ``EPOCH_COMPLETED`` not yet fired) and how many
  of its iterations are complete;
- the data pass, the batches of it completed and the cursor in global samples
  (:class:`~distengine.engine.datapass.DataPass`);
- whether it came from ``load_state_dict`` (then a finished position never starts a new run
  implicitly) and whether the last run in this process ended with ``terminate()``.

An iteration counts as complete once the process function has returned for its batch: a
state taken before that (in ``GET_BATCH_COMPLETED`` or ``ITERATION_STARTED`` handlers, in the
process function, in ``EXCEPTION_RAISED`` handlers after a failed step) records the position
*before* that batch, so a resume runs it again instead of skipping it.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from distengine.engine.datapass import DataPass
from distengine.engine.state import State

__all__ = ["RunPosition", "check_limit_reached", "check_position_dict"]


class RunPosition:
    """The position of a run (see the module docstring).

    Args:
        state: the engine's state, whose ``epoch`` and ``iteration`` this object writes.
    """

    def __init__(self, state: State):
        self.state = state
        self.data = DataPass()
        self.epoch_open = False
        self.epoch_iters = 0  # iterations completed in the open epoch
        self._epoch_base = 0  # state.iteration before the open epoch's first iteration
        self._pending_iters: int | None = None  # loaded: iterations done in the epoch to re-enter
        self.loaded = False
        self.terminated = False

    # --- the run loop's transitions ------------------------------------------------------
    def restart(self) -> None:
        """A new run: epoch and iteration 0, first data pass."""
        self.state.epoch = self.state.iteration = 0
        self.epoch_open = False
        self.epoch_iters = self._epoch_base = 0
        self._pending_iters = None
        self.loaded = self.terminated = False
        self.data.reset()

    def begin_epoch(self) -> int:
        """Enters the next epoch (or re-enters the loaded open one); returns the number of
        its iterations already complete."""
        s = self.state
        s.epoch += 1
        done = self._pending_iters or 0
        self._pending_iters = None
        self.epoch_open = True
        self.epoch_iters = done
        self._epoch_base = s.iteration - done
        return done

    def end_epoch(self) -> None:
        """The epoch's batches are done (or it was ended by ``terminate_epoch``)."""
        self.epoch_open = False
        self.epoch_iters = 0

    def reenter_open_epoch(self) -> None:
        """A run continued in this process after it stopped inside an epoch without
        ``terminate()`` (an exception, a preemption): the open epoch is entered again at its
        first incomplete iteration, as after loading a state saved there."""
        if self.epoch_open:
            s = self.state
            s.iteration = self.completed_iteration()
            s.epoch -= 1
            self._pending_iters = self.epoch_iters
            self.epoch_open = False
            self.epoch_iters = 0

    def continue_after_terminate(self) -> None:
        """Ignite's rule for ``run()`` again after ``terminate()`` in the same process: the
        open epoch is left (its iteration count kept) and the next epoch gets a new data pass."""
        if self.epoch_open:
            self.epoch_open = False
            self.epoch_iters = 0
            self.data.abandon_pass()
        self.terminated = False

    @property
    def in_epoch(self) -> bool:
        """An epoch is open or is due to be re-entered (its ``EPOCH_COMPLETED`` has not fired)."""
        return self.epoch_open or self._pending_iters is not None

    def is_done(self) -> bool:
        """Whether the run has nothing left to do (``max_iters`` reached, or ``max_epochs``
        epochs completed and no epoch open)."""
        s = self.state
        if s.max_iters is not None and self.completed_iteration() >= s.max_iters:
            return True
        if self.in_epoch or s.max_epochs is None:
            return False
        if s.epoch_length is not None and s.iteration >= s.epoch_length * s.max_epochs:
            return True
        return s.epoch >= s.max_epochs

    def completed_iteration(self) -> int:
        """Iterations whose process function returned (the run's position in iterations)."""
        if self.epoch_open:
            return self._epoch_base + self.epoch_iters
        return self.state.iteration

    # --- checkpoint form -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The position: Ignite's ``iteration``, the epoch state, the data pass and cursor."""
        s = self.state
        if self._pending_iters is not None:
            epoch, iters, in_progress = s.epoch + 1, self._pending_iters, True
        elif self.epoch_open:
            epoch, iters, in_progress = s.epoch, self.epoch_iters, True
        else:
            epoch, iters, in_progress = s.epoch, 0, False
        out: dict[str, Any] = {"iteration": self.completed_iteration()}
        out.update(self.data.state_dict())
        out["epoch_state"] = {
            "epoch": epoch,
            "iterations_in_epoch": iters,
            "in_progress": in_progress,
        }
        return out

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        """Positions the run at ``sd`` (already checked by :func:`check_position_dict`)."""
        s = self.state
        length = sd["epoch_length"]
        s.iteration = sd["iteration"]
        self.epoch_open = False
        self.epoch_iters = self._epoch_base = 0
        self._pending_iters = None
        progress = sd.get("epoch_state")
        if progress is not None:
            if progress["in_progress"]:
                # re-enter the epoch that was running (even with no batch left in it: its
                # EPOCH_COMPLETED is still due); until then state.epoch counts completed epochs
                s.epoch = progress["epoch"] - 1
                self._pending_iters = progress["iterations_in_epoch"]
            else:
                s.epoch = progress["epoch"]
        elif length is None:  # a never-run engine's state
            s.epoch = 0
        else:  # Ignite's form: only the iteration is known
            s.epoch, done = divmod(s.iteration, length)
            if done:
                self._pending_iters = done
        in_pass = sd.get("pass_batches")
        if in_pass is None:
            in_pass = self._pending_iters or 0
        data_pass = sd.get("data_pass")
        self.data.load(
            data_pass if data_pass is not None else s.epoch,
            in_pass,
            sd.get("cursor"),
            length=sd.get("data_length"),
            global_batch_size=sd.get("global_batch_size"),
            from_iteration=s.iteration if data_pass is None else None,
        )
        self.loaded = True
        self.terminated = False


def _int(sd: Mapping[str, Any], key: str, minimum: int, optional: bool = True) -> None:
    v = sd.get(key)
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
        allowed = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        allowed += " or None" if optional else ""
        raise ValueError(f"state_dict[{key!r}] must be {allowed}, got {v!r}")


def check_position_dict(state_dict: Any, user_keys: list[str]) -> dict[str, Any]:
    """Returns a normalized copy of an engine state dict, or raises a clear error.

    Accepts Ignite's forms (``iteration`` or ``epoch``, ``epoch_length``, exactly one of
    ``max_epochs``/``max_iters``, the declared user keys) and ours (plus ``seed``, ``run_id``,
    the data pass, cursor and epoch state). Every key that loading reads is checked; the
    messages keep Ignite's wording where its users match on it.

    Raises:
        TypeError: ``state_dict`` is not a mapping.
        ValueError: a key is missing, has the wrong type or range, or keys contradict.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"Argument state_dict should be a dictionary, but given {type(state_dict).__name__}"
        )
    sd = dict(state_dict)
    keys = sorted(map(str, sd))
    if "epoch_length" not in sd:
        raise ValueError(
            f"Required state attribute 'epoch_length' is absent in provided state_dict (keys {keys})"
        )
    if "iteration" in sd and "epoch" in sd:
        raise ValueError(
            "State dictionary should contain only one of 'iteration' or 'epoch' keys, got both: "
            f"iteration={sd['iteration']!r}, epoch={sd['epoch']!r}"
        )
    if "iteration" not in sd and "epoch" not in sd:
        raise ValueError(
            "Required state attribute 'iteration' is absent in provided state_dict (give "
            f"'iteration' or 'epoch'; keys {keys})"
        )
    if ("max_epochs" in sd) == ("max_iters" in sd):
        raise ValueError(
            "state_dict should contain exactly one of '('max_epochs', 'max_iters')' keys, got "
            f"keys {keys}"
        )
    for k in user_keys:
        if k not in sd:
            raise ValueError(
                f"Required user state attribute '{k}' is absent in provided state_dict (keys {keys})"
            )
    for key in ("iteration", "epoch"):
        _int(sd, key, 0)
    length = sd["epoch_length"]
    counter = sd.get("iteration", sd.get("epoch"))
    if counter is None:
        raise ValueError("state_dict's iteration/epoch must be an integer >= 0, got None")
    bad_length = length is not None and (
        isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 1
    )
    if bad_length or (length is None and counter):
        raise ValueError(
            "epoch_length must be a positive integer to calculate missing 'iteration' or 'epoch' "
            f"key (it is None only in the state of an engine that never ran), got "
            f"epoch_length={length!r} with {'epoch' if 'epoch' in sd else 'iteration'}={counter}"
        )
    if "epoch" in sd:
        sd["iteration"] = sd.pop("epoch") * (length or 0)
    _int(sd, "max_epochs", 1)
    _int(sd, "max_iters", 1)
    for key in (
        "seed",
        "data_pass",
        "pass_batches",
        "cursor",
        "world_size",
        "data_length",
        "global_batch_size",
    ):
        _int(sd, key, 1 if key in ("world_size", "data_length", "global_batch_size") else 0)
    run_id = sd.get("run_id")
    if run_id is not None and (not isinstance(run_id, str) or not run_id):
        raise ValueError(f"state_dict['run_id'] must be a non-empty str or None, got {run_id!r}")
    progress = sd.get("epoch_state")
    if progress is not None:
        sd["epoch_state"] = _check_epoch_state(progress, length)
        epoch = sd["epoch_state"]["epoch"] - (1 if sd["epoch_state"]["in_progress"] else 0)
    else:
        epoch = sd["iteration"] // length if length else 0
    check_limit_reached("max_epochs", sd.get("max_epochs"), epoch, "epoch")
    check_limit_reached("max_iters", sd.get("max_iters"), sd["iteration"], "iteration")
    return sd


def check_limit_reached(name: str, value: int | None, done: int, progress: str) -> None:
    """Raises unless ``value`` (``max_epochs``/``max_iters``) is at least the ``done`` count.

    Raises:
        ValueError: with Ignite's wording, saying how to start a new run instead.
    """
    if value is not None and value < done:
        raise ValueError(
            f"Argument {name} should be greater than or equal to the start {progress} defined "
            f"in the state: {value} vs {done}. Please, set engine.state.{name} = None before "
            "calling engine.run() in order to restart the training from the beginning."
        )


def _check_epoch_state(progress: Any, length: int | None) -> dict[str, Any]:
    if not isinstance(progress, Mapping):
        raise ValueError(
            f"state_dict['epoch_state'] must be a mapping, got {type(progress).__name__}"
        )
    out = {}
    for key in ("epoch", "iterations_in_epoch"):
        v = progress.get(key)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            raise ValueError(
                f"state_dict['epoch_state'][{key!r}] must be an integer >= 0, got {v!r}"
            )
        out[key] = int(v)
    in_progress = progress.get("in_progress")
    if not isinstance(in_progress, bool):
        raise ValueError(
            f"state_dict['epoch_state']['in_progress'] must be a bool, got {in_progress!r}"
        )
    out["in_progress"] = in_progress
    if in_progress and out["epoch"] < 1:
        raise ValueError("state_dict['epoch_state'] has an epoch in progress but epoch 0")
    if length is not None and out["iterations_in_epoch"] > length:
        raise ValueError(
            f"state_dict['epoch_state']['iterations_in_epoch']={out['iterations_in_epoch']} "
            f"exceeds epoch_length={length}"
        )
    return out
