"""Checks and agreements that ``Engine.run`` makes before its loop: arguments, seed, run id.

Pure functions over their arguments (and one collective, :func:`agree_on_run`): the Engine
applies what they return to its own state.
"""

from __future__ import annotations

import numbers
import secrets
from collections.abc import Iterable
from typing import Any

import torch

from distengine import distributed as idist
from distengine.engine.signatures import check_signature

__all__ = [
    "agree_on_run",
    "check_limit",
    "check_process_function",
    "check_run_arguments",
    "check_seed",
    "new_run_id",
]


def check_process_function(process_function: object, sync_check_every: object) -> None:
    """What ``Engine(...)`` accepts: ``process_function(engine, batch)``."""
    if process_function is None:
        raise ValueError(
            "Engine must be given a processing function in order to run: "
            "process_function(engine, batch), got None"
        )
    if not callable(process_function):
        raise TypeError(
            f"process_function must be callable as process_function(engine, batch), got "
            f"{type(process_function).__name__}"
        )
    check_signature(process_function, "process_function", "engine", "batch")
    if sync_check_every is not None and (
        isinstance(sync_check_every, bool)
        or not isinstance(sync_check_every, int)
        or sync_check_every < 1
    ):
        raise ValueError(
            f"sync_check_every must be a positive int or None, got {sync_check_every!r}"
        )


def check_limit(name: str, value: object) -> None:
    """``max_epochs``, ``max_iters`` and ``epoch_length`` are positive ints (or ``None``).

    Raises:
        TypeError: not an int (a float, a string, a bool).
        ValueError: an int below 1.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Argument {name} must be a positive int or None, got {value!r}")
    if value < 1:
        raise ValueError(f"Argument {name} must be a positive integer, got {value}")


def check_seed(seed: object) -> None:
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0
    ):
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")


def check_run_arguments(
    data: Any,
    max_epochs: object,
    epoch_length: object,
    max_iters: object,
    seed: object,
) -> None:
    """Everything ``run`` can check without the engine's state."""
    if data is not None and not isinstance(data, Iterable):
        raise TypeError(f"Argument data should be iterable, got {type(data).__name__}")
    check_limit("max_epochs", max_epochs)
    check_limit("epoch_length", epoch_length)
    check_limit("max_iters", max_iters)
    check_seed(seed)
    if max_epochs is not None and max_iters is not None:
        raise ValueError(
            "Arguments max_iters and max_epochs are mutually exclusive. Please provide only "
            f"max_epochs or max_iters. Got max_epochs={max_epochs}, max_iters={max_iters}"
        )


def new_run_id() -> str:
    """A fresh run identity: 16 random hex digits, never from torch's RNG (two jobs seeded
    alike must still differ)."""
    return secrets.token_hex(8)


def default_seed() -> int:
    """The seed of a run started without ``seed=``: torch's initial seed.

    ``torch.manual_seed(s)`` makes it ``s`` (so a script seeded the usual way reads its data
    in the same order at every launch); without any seeding torch draws a fresh initial seed
    per process, so the run is random. Reading it draws nothing from the generator.
    """
    return torch.initial_seed() % (1 << 63)


def agree_on_run(seed: int | None, epoch_length: int | None) -> tuple[int, str]:
    """One seed and one run id on all ranks: the given seed (which must match everywhere) or
    rank 0's :func:`default_seed`, and rank 0's run id.

    At world size > 1 this is one collective that also checks what every rank must share:
    the seed and the epoch length (ranks running different numbers of iterations would pair
    their collectives wrongly). Checks run after the gather, so every rank raises alike.
    """
    if idist.get_world_size() == 1:
        check_seed(seed)
        return (seed if seed is not None else default_seed()), new_run_id()
    gathered = idist.all_gather((seed, default_seed(), epoch_length, new_run_id()))
    for given, *_ in gathered:
        check_seed(given)
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
