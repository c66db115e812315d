"""TerminateOnNan on one process: which outputs stop the run, and when."""

import math
from decimal import Decimal

import pytest
import torch

from distengine.engine import Engine, Events
from distengine.handlers.terminate_on_nan import TerminateOnNan


def _run(outputs, handler=None, max_epochs=2):
    trainer = Engine(lambda e, b: outputs[(e.state.iteration - 1) % len(outputs)])
    trainer.add_event_handler(Events.ITERATION_COMPLETED, handler or TerminateOnNan())
    completed = []
    trainer.add_event_handler(Events.COMPLETED, lambda e: completed.append(e.state.iteration))
    trainer.run(list(range(len(outputs))), max_epochs=max_epochs)
    return trainer, completed


@pytest.mark.parametrize(
    "bad",
    [
        math.nan,
        float("inf"),
        torch.tensor(float("-inf")),
        torch.tensor([1.0, math.nan]),
        Decimal("NaN"),
        {"loss": torch.tensor(1.0), "aux": (torch.tensor(2.0), math.nan)},
    ],
    ids=["float-nan", "float-inf", "tensor-inf", "tensor-1d", "decimal", "nested"],
)
def test_stops_at_the_iteration_that_produced_it(bad):
    outputs = [torch.tensor(1.0), 2.0, bad, torch.tensor(0.5)]
    trainer, completed = _run(outputs)
    assert trainer.state.iteration == 3 and trainer.state.epoch == 1
    assert completed == [3]  # terminate() still fires COMPLETED, as in Ignite


@pytest.mark.parametrize(
    "fine", [torch.tensor([1, 2]), "text", None, {"n": 3, "t": torch.ones(2, 2)}], ids=str
)
def test_finite_and_non_numeric_outputs_keep_running(fine):
    trainer, _ = _run([fine, torch.tensor(1.0)])
    assert trainer.state.iteration == 4


def test_output_transform_selects_what_is_checked():
    outputs = [{"loss": 1.0, "ignored": math.nan}, {"loss": math.nan, "ignored": 0.0}]
    trainer, _ = _run(outputs, TerminateOnNan(output_transform=lambda out: out["loss"]))
    assert trainer.state.iteration == 2


def test_rejects_non_callable_transform():
    with pytest.raises(TypeError, match="output_transform"):
        TerminateOnNan(output_transform="loss")
