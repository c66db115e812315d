"""TerminateOnNan: stop the run when the output holds a NaN or an infinity."""

from __future__ import annotations

import cmath
import logging
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

import distengine.distributed as idist
from distengine.engine import Engine

_log = logging.getLogger(__name__)


def _all_finite(value: Any) -> bool:
    """Returns False if ``value`` -- a number, tensor, or nested sequence/mapping -- has NaN/inf."""
    if isinstance(value, torch.Tensor):
        if not (value.is_floating_point() or value.is_complex()):
            return True
        return bool(torch.isfinite(value).all())
    if isinstance(value, numbers.Number):  # int, float, complex, numpy scalars, Decimal
        try:
            return cmath.isfinite(complex(value))
        except (TypeError, ValueError):
            return True
    if isinstance(value, Mapping):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return all(_all_finite(v) for v in value)
    return True


class TerminateOnNan:
    """Calls ``engine.terminate()`` when the (transformed) output is not finite.

    Numbers and floating-point tensors are checked, also inside lists, tuples and dicts;
    other values are ignored. The check is local: a NaN on one rank makes that rank
    request termination, and the engine's agreement (one small collective per iteration
    that it makes anyway) stops every rank after the same iteration: at world size > 1 the
    iteration after the one with the NaN (unless that was its epoch's last; see ``Engine``).
    The handler itself
    makes no collective. Checking a CUDA tensor synchronises with the GPU once per call.

    Args:
        output_transform: maps ``engine.state.output`` to the value to check.

    Example:
        >>> handle = trainer.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan())
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(float("nan"))
        >>> trainer.run(loader, max_epochs=2).iteration  # stopped after the first iteration
        1

        For an output that is a dict, say which value to check:

        >>> nan_check = TerminateOnNan(output_transform=lambda out: out["loss"])
    """

    def __init__(self, output_transform: Callable[[Any], Any] = lambda x: x) -> None:
        if not callable(output_transform):
            raise TypeError(f"output_transform should be callable, got {output_transform!r}")
        self._output_transform = output_transform

    def __call__(self, engine: Engine) -> None:
        """Checks ``engine.state.output``; terminates ``engine`` if it has a NaN or inf."""
        output = self._output_transform(engine.state.output)
        if _all_finite(output):
            return
        _log.warning(
            "TerminateOnNan: output %.200r on rank %d is NaN or infinite at iteration %d; stopping",
            output,
            idist.get_rank(),
            engine.state.iteration,
        )
        engine.terminate()
