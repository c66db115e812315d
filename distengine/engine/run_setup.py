"""What ``Engine.run`` decides before the loop: new run or continuation, lengths, seed."""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from distengine import distributed as idist

if TYPE_CHECKING:
    from distengine.engine.engine import Engine

__all__ = ["check_engine_args", "prepare_run"]


def check_engine_args(process_function: object, sync_check_every: object) -> None:
    """What ``Engine(...)`` accepts."""
    if not callable(process_function):
        raise TypeError(f"process_function must be callable, got {type(process_function).__name__}")
    if sync_check_every is not None and (
        isinstance(sync_check_every, bool)
        or not isinstance(sync_check_every, int)
        or sync_check_every < 1
    ):
        raise ValueError(
            f"sync_check_every must be a positive int or None, got {sync_check_every!r}"
        )


def _data_length(data: Any) -> int | None:
    try:
        return len(data) if hasattr(data, "__len__") else None
    except TypeError:
        return None


def _set_limit(engine: Engine, name: str, value: int | None, progress: str) -> None:
    if value is None:
        return
    if value < 1:
        raise ValueError(f"Argument {name} must be a positive integer, got {value}")
    done = getattr(engine.state, progress)
    if value < done:
        raise ValueError(
            f"Argument {name}={value} is smaller than the {progress} already reached ({done}); "
            f"set engine.state.{name} = None before run() to start again from the beginning"
        )
    setattr(engine.state, name, value)


def _check_seed(seed: object) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")


def _agree_on_seed(seed: int | None, epoch_length: int | None) -> tuple[int, str]:
    """One seed and one run id on all ranks: the given seed (which must match everywhere) or
    rank 0's draw, and rank 0's run id.

    At world size > 1 this is one collective that also checks what every rank must share:
    the seed and the epoch length (ranks running different numbers of iterations would pair
    their collectives wrongly). Checks run after the gather, so every rank raises alike.
    """
    if idist.get_world_size() == 1:
        _check_seed(seed)
        return (seed if seed is not None else _draw_seed()), new_run_id()
    gathered = idist.all_gather((seed, _draw_seed(), epoch_length, new_run_id()))
    for given, *_ in gathered:
        _check_seed(given)
    seeds = [g for g, *_ in gathered]
    if len(set(seeds)) > 1:
        raise ValueError(
            f"run(seed=...) must be the same on every rank, got {seeds} (one per rank)"
        )
    lengths = [n for _, _, n, _ in gathered]
    if None in lengths:
        raise ValueError(
            "At world size > 1 every rank must know the epoch length: pass epoch_length= for data "
            f"without len (got epoch lengths {lengths}, one per rank)"
        )
    if len(set(lengths)) > 1:
        raise ValueError(
            f"Every rank must run the same number of iterations per epoch, got epoch lengths {lengths} "
            "(one per rank): use idist.auto_dataloader, or give the same epoch_length everywhere"
        )
    return (seed if seed is not None else int(gathered[0][1])), str(gathered[0][3])


def new_run_id() -> str:
    """A fresh run identity: 16 random hex digits, never from torch's RNG (two jobs seeded
    alike must still differ)."""
    return secrets.token_hex(8)


def _draw_seed() -> int:
    # Not from torch's global RNG: drawing a seed must not shift the trainer's random stream.
    return secrets.randbits(31)


def prepare_run(
    engine: Engine,
    data: Iterable | None,
    max_epochs: int | None,
    epoch_length: int | None,
    max_iters: int | None,
    seed: int | None,
) -> None:
    s = engine.state
    if data is not None and not isinstance(data, Iterable):
        raise TypeError(f"Argument data must be iterable, got {type(data).__name__}")
    if max_epochs is not None and max_iters is not None:
        raise ValueError("Arguments max_iters and max_epochs are mutually exclusive: give only one")
    if max_iters is not None and s.max_epochs is not None and s.max_iters is None:
        raise ValueError(
            "To switch from max_epochs to max_iters when continuing a run, set "
            "engine.state.max_epochs = None before run()"
        )
    if max_epochs is not None and s.max_iters is not None:
        raise ValueError(
            "To switch from max_iters to max_epochs when continuing a run, set "
            "engine.state.max_iters = None before run()"
        )
    if s.max_iters is not None:
        _set_limit(engine, "max_iters", max_iters, "iteration")
        if s.max_epochs is not None and s.epoch_length:  # derived from max_iters (data without len)
            s.max_epochs = math.ceil(s.max_iters / s.epoch_length)
    elif s.max_epochs is not None:
        _set_limit(engine, "max_epochs", max_epochs, "epoch")

    new_run = (s.max_epochs is None and s.max_iters is None) or (
        engine._is_done() and engine._run_gen is None
    )
    if new_run:
        if data is None and epoch_length is None and s.epoch_length is None:
            raise ValueError("epoch_length must be given when data is None")
        if epoch_length is None:
            epoch_length = _data_length(data) if data is not None else None
            if epoch_length is None:
                epoch_length = s.epoch_length
        if epoch_length is not None and epoch_length < 1:
            raise ValueError(
                f"The data is empty or epoch_length is not positive: got {epoch_length}"
            )
        if max_iters is None and max_epochs is None:
            max_epochs = 1
        s.iteration = s.epoch = 0
        s.max_epochs = None if max_iters is not None else max_epochs
        s.max_iters = max_iters
        s.epoch_length = epoch_length
        s.seed, s.run_id = _agree_on_seed(seed, epoch_length)
        engine._run_gen = None
        engine._dataloader_iter = None
        engine._data.reset()
    else:
        if s.epoch_length is not None:
            if epoch_length is not None and epoch_length != s.epoch_length:
                raise ValueError(
                    f"Argument epoch_length must match the state's: given {epoch_length}, "
                    f"state has {s.epoch_length}"
                )
        else:
            if epoch_length is None and data is not None:
                epoch_length = _data_length(data)
            if epoch_length is not None:
                if epoch_length < 1:
                    raise ValueError(f"epoch_length must be positive, got {epoch_length}")
                s.epoch_length = epoch_length
        if s.epoch_length is None and data is None:
            raise ValueError("epoch_length must be given when data is None")
        if seed is not None and s.seed is not None and seed != s.seed:
            raise ValueError(
                f"This run continues a run with seed {s.seed}: got seed={seed}. The saved seed "
                "decides the data order; pass the same seed or none"
            )
        if s.seed is None or s.run_id is None:
            agreed_seed, run_id = _agree_on_seed(seed if s.seed is None else s.seed, s.epoch_length)
            s.seed = agreed_seed
            if s.run_id is None:
                s.run_id = run_id
    if engine._dataloader_iter is None:
        s.dataloader = data
        engine._data.bind(data)
