"""distengine: a rank-aware training Engine for PyTorch with exact resume.

Example:
    >>> from distengine import Engine, Events
    >>> engine = Engine(lambda engine, batch: batch)
    >>> engine.run([1, 2, 3], max_epochs=1).iteration
    3
"""

__version__ = "0.1.0"

from distengine.engine import Engine, Events, State  # noqa: E402

__all__ = ["Engine", "Events", "State", "__version__"]
