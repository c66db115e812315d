"""Names that docstring examples in ``distengine/`` may use without building them.

``python -m pytest --doctest-modules distengine`` runs every ``>>>`` example in the library
(CI does, see ``.ci/run``). So that an example shows the call it documents rather than ten
lines of setup, each example starts with these fresh objects (built again for every example,
with ``torch.manual_seed(0)``), in a fresh temporary working directory:

- ``model``: ``torch.nn.Linear(4, 3)``, a 3-class classifier of 4 features;
- ``optimizer``: ``torch.optim.SGD(model.parameters(), lr=0.1)``;
- ``loader``: a ``DataLoader`` of 4 batches of 4 ``(x, y)`` samples (16 in all);
- ``trainer``: ``create_supervised_trainer(model, optimizer, cross_entropy)`` (its output
  is the batch loss);
- ``evaluator``: ``create_supervised_evaluator(model)`` (its output is ``(y_pred, y)``);
- ``torch``, ``Engine`` and ``Events``.

Anything else an example uses, it builds or imports itself. An example that needs an
optional package (an extra of ``pyproject.toml``) is skipped, saying so, where that package
is not installed; CI installs them all (``requirements-ci.txt``), so there they all run.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator

import pytest
from _pytest.doctest import DoctestItem

# Examples (by the dotted name of what they document) and the optional package each needs.
_OPTIONAL = {
    "distengine.handlers.tensorboard_logger.": "tensorboard",
    "distengine.handlers.logger_utils.setup_tb_logging": "tensorboard",
    "distengine.metrics.torch_metric.": "torchmetrics",
}


@pytest.fixture(autouse=True)
def _doctest_objects(request: pytest.FixtureRequest, tmp_path, monkeypatch) -> Iterator[None]:
    if not isinstance(request.node, DoctestItem):
        yield
        return
    for prefix, package in _OPTIONAL.items():
        if request.node.name.startswith(prefix) and importlib.util.find_spec(package) is None:
            pytest.skip(f"needs the optional package {package}, which is not installed")
    monkeypatch.chdir(tmp_path)  # files an example writes (logs, checkpoints) go there
    import torch

    from distengine import Engine, Events
    from distengine.engine import create_supervised_evaluator, create_supervised_trainer

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    dataset = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randint(0, 3, (16,)))
    namespace = request.getfixturevalue("doctest_namespace")
    namespace.update(
        torch=torch,
        Engine=Engine,
        Events=Events,
        model=model,
        optimizer=optimizer,
        loader=torch.utils.data.DataLoader(dataset, batch_size=4),
        trainer=create_supervised_trainer(model, optimizer, torch.nn.functional.cross_entropy),
        evaluator=create_supervised_evaluator(model),
    )
    loggers = logging.root.manager.loggerDict
    before = {name: list(getattr(lg, "handlers", ())) for name, lg in loggers.items()}
    yield
    # The tests run in this process after the examples: a logger an example configured
    # (with setup_logger, as show_config does) must not outlive it, or a test's first
    # setup_logger of that name would find it configured already.
    for name in list(loggers):
        lg = loggers[name]
        if not isinstance(lg, logging.Logger):
            continue
        configured = bool(lg.handlers) or not lg.propagate
        for handler in lg.handlers[:]:
            if handler not in before.get(name, ()):
                lg.removeHandler(handler)
                handler.close()
        if name not in before and configured:
            del loggers[name]  # a plain module logger (getLogger(__name__)) is kept
