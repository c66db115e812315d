"""Validation of engine state dicts (what ``load_state_dict`` accepts and why it refuses)."""

from __future__ import annotations

import numbers
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from distengine import distributed as idist

if TYPE_CHECKING:
    from distengine.engine.engine import Engine

__all__ = ["apply_state_dict", "build_state_dict", "check_state_dict"]


def _int_or_none(sd: Mapping, key: str, minimum: int) -> None:
    v = sd.get(key)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
        raise ValueError(f"state_dict[{key!r}] must be an integer >= {minimum} or None, got {v!r}")


def check_state_dict(state_dict: Any, user_keys: list[str]) -> dict[str, Any]:
    """Returns a normalized copy of an engine state dict, or raises a clear error.

    Accepts Ignite's forms: ``iteration`` or ``epoch`` (not both), ``epoch_length``,
    ``max_epochs`` or ``max_iters``, and the user keys the engine declared.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
    sd = dict(state_dict)
    if "iteration" in sd and "epoch" in sd:
        raise ValueError(
            "state_dict must hold only one of 'iteration' and 'epoch', got both: "
            f"iteration={sd['iteration']!r}, epoch={sd['epoch']!r}"
        )
    required = [("iteration or epoch", ("iteration", "epoch")), ("epoch_length", ("epoch_length",))]
    required.append(("max_epochs or max_iters", ("max_epochs", "max_iters")))
    missing = [name for name, keys in required if not any(k in sd for k in keys)]
    missing += [k for k in user_keys if k not in sd]
    if missing:
        raise ValueError(f"state_dict is missing required keys: {missing} (got keys {sorted(sd)})")
    length = sd["epoch_length"]
    if (
        length is None
        or isinstance(length, bool)
        or not isinstance(length, numbers.Integral)
        or length < 1
    ):
        raise ValueError(f"state_dict['epoch_length'] must be a positive integer, got {length!r}")
    for key in ("iteration", "epoch"):
        _int_or_none(sd, key, 0)
    _int_or_none(sd, "max_epochs", 1)
    _int_or_none(sd, "max_iters", 1)
    if "epoch" in sd:
        sd["iteration"] = sd.pop("epoch") * length
    if sd["iteration"] is None:
        raise ValueError("state_dict['iteration'] must be an integer >= 0, got None")
    epoch = sd["iteration"] // length
    if sd.get("max_epochs") is not None and epoch > sd["max_epochs"]:
        raise ValueError(
            f"state_dict's epoch {epoch} (iteration {sd['iteration']} / epoch_length {length}) "
            f"is beyond max_epochs={sd['max_epochs']}"
        )
    if sd.get("max_iters") is not None and sd["iteration"] > sd["max_iters"]:
        raise ValueError(
            f"state_dict's iteration {sd['iteration']} is beyond max_iters={sd['max_iters']}"
        )
    if (
        "max_epochs" in sd
        and "max_iters" in sd
        and sd["max_epochs"] is not None
        and sd["max_iters"] is not None
    ):
        raise ValueError("state_dict must hold only one of 'max_epochs' and 'max_iters'")
    seed = sd.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ValueError(f"state_dict['seed'] must be an integer or None, got {seed!r}")
    run_id = sd.get("run_id")
    if run_id is not None and (not isinstance(run_id, str) or not run_id):
        raise ValueError(f"state_dict['run_id'] must be a non-empty str or None, got {run_id!r}")
    return sd


def build_state_dict(engine: Engine) -> OrderedDict:
    """What ``Engine.state_dict`` returns (see there)."""
    s = engine.state
    sd: OrderedDict = OrderedDict(iteration=s.iteration, epoch_length=s.epoch_length)
    if s.max_iters is not None:
        sd["max_iters"] = s.max_iters
    else:
        sd["max_epochs"] = s.max_epochs
    for k in engine.state_dict_user_keys:
        sd[k] = getattr(s, k)
    sd["seed"] = s.seed
    sd["run_id"] = s.run_id
    sd.update(engine._data.state_dict())
    # where in the epochs the run stands: epochs can end early (terminate_epoch), so this is
    # not derivable from the iteration; "in_progress" until the epoch's batches are done
    sd["epoch_state"] = {
        "epoch": s.epoch,
        "iterations_in_epoch": engine._epoch_iters if engine._in_epoch_loop else 0,
        "in_progress": bool(engine._in_epoch_loop),
    }
    sd["world_size"] = idist.get_world_size()
    if sd["world_size"] == 1:
        sd["rank_state"] = engine.rank_state_dict()
    return sd


def apply_state_dict(engine: Engine, state_dict: Mapping[str, Any]) -> None:
    """Positions ``engine`` where ``state_dict`` was taken (see ``Engine.load_state_dict``)."""
    sd = check_state_dict(state_dict, engine.state_dict_user_keys)
    s = engine.state
    for k in engine.state_dict_user_keys:
        setattr(s, k, sd[k])
    s.epoch_length = sd["epoch_length"]
    s.iteration = sd["iteration"]
    s.epoch = s.iteration // s.epoch_length
    s.max_epochs, s.max_iters = sd.get("max_epochs"), sd.get("max_iters")
    engine._init_iter = s.iteration % s.epoch_length
    engine._open_epoch = False
    progress = sd.get("epoch_state")
    if isinstance(progress, Mapping):
        if progress.get("in_progress"):
            # resume into the epoch that was running (even with no batch left in it: its
            # EPOCH_COMPLETED is still due)
            s.epoch = int(progress["epoch"]) - 1
            engine._init_iter = int(progress["iterations_in_epoch"])
            engine._open_epoch = True
        else:
            s.epoch, engine._init_iter = int(progress["epoch"]), 0
    s.seed = sd.get("seed")
    s.run_id = sd.get("run_id")
    in_pass = sd.get("pass_batches", s.iteration % s.epoch_length)
    engine._data.load(sd.get("data_pass", s.epoch), in_pass, sd.get("cursor"))
    # per-rank RNG streams only map onto the same world size
    if "rank_state" in sd and sd.get("world_size", 1) == idist.get_world_size():
        engine.load_rank_state_dict(sd["rank_state"])
