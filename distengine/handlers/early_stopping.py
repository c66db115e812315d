"""EarlyStopping: stop training when a score stops improving."""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal

from distengine.engine import Engine, Events

_log = logging.getLogger(__name__)


def _deprecated(old: str, new: str) -> None:
    warnings.warn(
        f"EarlyStopping's '{old}' is deprecated (Ignite 0.5.5 renamed it); use '{new}'",
        DeprecationWarning,
        stacklevel=3,
    )


class EarlyStopping:
    """Calls ``trainer.terminate()`` after ``patience`` checks without improvement.

    Attach it to an evaluator (or the trainer) on the event where the score is known.
    Scores are compared in the direction of ``mode``: with ``mode="max"`` a score counts
    as an improvement if it exceeds the best score by more than ``threshold`` (or by the
    relative ``threshold`` with ``threshold_mode="rel"``). With ``cumulative=False``
    the best score also moves up to a non-improving score, so the threshold applies to the
    change since the last check; with True it applies to the change since the last
    improvement. A NaN score counts as no improvement.

    On many ranks, make the score from reduced metrics (every distengine metric in
    ``engine.state.metrics`` is reduced across ranks), so every rank makes the same
    decision; the engine's agreement stops all ranks after the same iteration in any case.
    ``state_dict``/``load_state_dict`` carry ``counter``, ``best_score`` and
    ``threshold_mode``: give the handler to ``Checkpoint`` to resume the count.

    Args:
        patience: checks without improvement before stopping (>= 1).
        score_function: maps the engine it is attached to to a float score.
        trainer: the engine to terminate.
        threshold: minimum change that counts as an improvement (>= 0).
        cumulative: see above.
        threshold_mode: ``"abs"`` (absolute change) or ``"rel"`` (change relative to the
            best score).
        mode: ``"max"`` (higher is better) or ``"min"`` (lower is better).
        min_delta: the name of ``threshold`` before Ignite 0.5.5 (deprecated; wins over
            ``threshold`` when both are given, with a ``DeprecationWarning``).
        min_delta_mode: the old name of ``threshold_mode`` (deprecated, likewise).
        cumulative_delta: the old name of ``cumulative`` (deprecated, likewise).

    The old names also exist as attributes (``handler.min_delta`` reads and writes
    ``handler.threshold``, with a ``DeprecationWarning``).

    Example:
        >>> from distengine.metrics import Loss
        >>> Loss(torch.nn.functional.cross_entropy).attach(evaluator, "loss")
        >>> handler = EarlyStopping(
        ...     patience=3, score_function=lambda ev: -ev.state.metrics["loss"], trainer=trainer
        ... )
        >>> handle = evaluator.add_event_handler(Events.COMPLETED, handler)
        >>> to_save = {"trainer": trainer, "model": model, "early_stopping": handler}
        >>> @trainer.on(Events.EPOCH_COMPLETED)
        ... def validate():
        ...     evaluator.run(loader)
        >>> state = trainer.run(loader, max_epochs=3)
        >>> handler.counter  # validations in a row without a better loss
        0
    """

    def __init__(
        self,
        patience: int,
        score_function: Callable[[Engine], float],
        trainer: Engine,
        threshold: float = 0.0,
        cumulative: bool = False,
        threshold_mode: Literal["abs", "rel"] = "abs",
        mode: Literal["min", "max"] = "max",
        min_delta: float | None = None,
        min_delta_mode: Literal["abs", "rel"] | None = None,
        cumulative_delta: bool | None = None,
    ) -> None:
        if min_delta is not None:
            _deprecated("min_delta", "threshold")
            threshold = min_delta
        if min_delta_mode is not None:
            _deprecated("min_delta_mode", "threshold_mode")
            threshold_mode = min_delta_mode
        if cumulative_delta is not None:
            _deprecated("cumulative_delta", "cumulative")
            cumulative = cumulative_delta
        if not callable(score_function):
            raise TypeError(
                f"Argument score_function should be a function (taking the Engine), got {score_function!r}"
            )
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"Argument patience should be positive integer, got {patience!r}")
        if not isinstance(trainer, Engine):
            raise TypeError(
                f"Argument trainer should be an instance of Engine, got {type(trainer).__name__}"
            )
        if not isinstance(threshold, int | float) or threshold < 0:
            raise ValueError(
                f"Argument threshold should not be a negative number, got {threshold!r}"
            )
        if threshold_mode not in ("abs", "rel"):
            raise ValueError(
                f"Argument threshold_mode should be either 'abs' or 'rel', got {threshold_mode!r}"
            )
        if mode not in ("min", "max"):
            raise ValueError(f"Argument mode should be either 'min' or 'max', got {mode!r}")
        self.patience = patience
        self.score_function = score_function
        self.trainer = trainer
        self.threshold = float(threshold)
        self.cumulative = bool(cumulative)
        self.threshold_mode = threshold_mode
        self.mode = mode
        self.counter = 0
        self.best_score: float | None = None
        # Set by load_state_dict so that the reset registered by ``attach`` on the resumed
        # run's STARTED keeps the loaded state instead of wiping it.
        self._just_loaded = False

    @property
    def min_delta(self) -> float:
        """Deprecated name of :attr:`threshold`."""
        _deprecated("min_delta", "threshold")
        return self.threshold

    @min_delta.setter
    def min_delta(self, value: float) -> None:
        _deprecated("min_delta", "threshold")
        self.threshold = value

    @property
    def min_delta_mode(self) -> str:
        """Deprecated name of :attr:`threshold_mode`."""
        _deprecated("min_delta_mode", "threshold_mode")
        return self.threshold_mode

    @min_delta_mode.setter
    def min_delta_mode(self, value: Literal["abs", "rel"]) -> None:
        _deprecated("min_delta_mode", "threshold_mode")
        self.threshold_mode = value

    @property
    def cumulative_delta(self) -> bool:
        """Deprecated name of :attr:`cumulative`."""
        _deprecated("cumulative_delta", "cumulative")
        return self.cumulative

    @cumulative_delta.setter
    def cumulative_delta(self, value: bool) -> None:
        _deprecated("cumulative_delta", "cumulative")
        self.cumulative = value

    def __call__(self, engine: Engine) -> None:
        """Reads the score from ``engine`` and counts or resets the patience."""
        score = float(self.score_function(engine))
        if math.isnan(score):
            self._no_improvement(score)
            return
        if self.best_score is None:
            self.best_score = score
            return
        if self._improves(score):
            self.best_score = score
            self.counter = 0
            return
        if not self.cumulative:
            better = max if self.mode == "max" else min
            self.best_score = better(score, self.best_score)
        self._no_improvement(score)

    def _improves(self, score: float) -> bool:
        assert self.best_score is not None
        delta = self.threshold if self.mode == "max" else -self.threshold
        if self.threshold_mode == "abs":
            bar = self.best_score + delta
        else:
            bar = self.best_score * (1.0 + delta)
        return score > bar if self.mode == "max" else score < bar

    def _no_improvement(self, score: float) -> None:
        self.counter += 1
        _log.debug("EarlyStopping: score %s, %d / %d", score, self.counter, self.patience)
        if self.counter >= self.patience:
            _log.info("EarlyStopping: no improvement in %d checks; stopping", self.patience)
            self.trainer.terminate()

    def reset(self, *_: Any, from_event: bool = False) -> None:
        """Forgets the best score and the count.

        Args:
            from_event: set when a ``reset_event`` calls it: a reset right after
                ``load_state_dict`` (the resumed run's ``STARTED``) then keeps the loaded
                state. A direct call always resets.
        """
        if from_event and self._just_loaded:
            self._just_loaded = False
            return
        self.counter = 0
        self.best_score = None
        self._just_loaded = False

    def attach(
        self,
        engine: Engine,
        event: Any = Events.COMPLETED,
        reset_engine: Engine | None = None,
        reset_event: Any = Events.STARTED,
    ) -> None:
        """Checks on ``event`` of ``engine``; resets on ``reset_event`` of ``reset_engine``.

        Without ``reset_engine`` the reset goes on ``engine`` only when ``engine`` is the
        trainer. Ignite also registers it on an evaluator's own ``STARTED``, which undoes
        every check (the count never reaches ``patience``); here no reset is registered
        then. A reset that fires right after ``load_state_dict`` (the resumed run's
        ``STARTED``) keeps the loaded state.

        Args:
            engine: the engine whose event triggers the check (usually the evaluator).
            event: the triggering event.
            reset_engine: the engine whose ``reset_event`` resets the handler (usually the
                trainer); None: the trainer if ``engine`` is the trainer, else no reset.
            reset_event: the resetting event.

        Example:
            >>> handler = EarlyStopping(patience=2, score_function=lambda ev: 0.0, trainer=trainer)
            >>> handler.attach(evaluator, reset_engine=trainer)  # the count restarts with each run
        """
        engine.add_event_handler(event, self)
        if reset_engine is None and engine is self.trainer:
            reset_engine = engine
        if reset_engine is not None:
            reset_engine.add_event_handler(
                reset_event, functools.partial(self.reset, from_event=True)
            )

    def state_dict(self) -> dict[str, Any]:
        """Returns ``{"counter": int, "best_score": float | None, "threshold_mode": str}``."""
        return {
            "counter": self.counter,
            "best_score": self.best_score,
            "threshold_mode": self.threshold_mode,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores ``counter``, ``best_score`` (and ``threshold_mode``, if saved).

        Raises:
            ValueError: if ``counter`` or ``best_score`` is missing.
        """
        missing = {"counter", "best_score"} - set(state_dict)
        if missing:
            raise ValueError(
                f"EarlyStopping state_dict should have keys 'counter' and 'best_score', "
                f"missing {sorted(missing)}"
            )
        self.counter = int(state_dict["counter"])
        best = state_dict["best_score"]
        self.best_score = None if best is None else float(best)
        self.threshold_mode = state_dict.get("threshold_mode", self.threshold_mode)
        self._just_loaded = True
