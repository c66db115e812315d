"""EarlyStopping: stop training when a score stops improving."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

from distengine.engine import Engine, Events

_log = logging.getLogger(__name__)


def _pick(name: str, value: Any, default: Any, alias: str, alias_value: Any) -> Any:
    """Resolve a parameter given under its name or its Ignite 0.5.5 alias."""
    if alias_value is None:
        return value
    if value != default and value != alias_value:
        raise ValueError(
            f"{name} and {alias} are the same parameter; got {name}={value!r} and "
            f"{alias}={alias_value!r}"
        )
    return alias_value


class EarlyStopping:
    """Call ``trainer.terminate()`` after ``patience`` checks without improvement.

    Attach it to an evaluator (or the trainer) on the event where the score is known.
    Scores are compared in the direction of ``mode``: with ``mode="max"`` a score counts
    as an improvement if it exceeds the best score by more than ``min_delta`` (or by the
    relative ``min_delta`` with ``min_delta_mode="rel"``). With ``cumulative_delta=False``
    the best score also moves up to a non-improving score, so the threshold applies to the
    change since the last check; with True it applies to the change since the last
    improvement. A NaN score counts as no improvement.

    On many ranks, make the score from reduced metrics (every distengine metric in
    ``engine.state.metrics`` is reduced across ranks), so every rank makes the same
    decision; the engine's agreement stops all ranks after the same iteration in any case.
    ``state_dict``/``load_state_dict`` carry ``counter`` and ``best_score``: give the
    handler to ``Checkpoint`` to resume the count.

    Args:
        patience: checks without improvement before stopping (>= 1).
        score_function: maps the engine it is attached to to a float score.
        trainer: the engine to terminate.
        min_delta: minimum change that counts as an improvement (>= 0).
        cumulative_delta: see above.
        min_delta_mode: ``"abs"`` (absolute change) or ``"rel"`` (change relative to the
            best score).
        mode: ``"max"`` (higher is better) or ``"min"`` (lower is better).
        threshold: Ignite 0.5.5's name for ``min_delta``.
        cumulative: Ignite 0.5.5's name for ``cumulative_delta``.
        threshold_mode: Ignite 0.5.5's name for ``min_delta_mode``.

    Example:
        >>> handler = EarlyStopping(
        ...     patience=3, score_function=lambda ev: -ev.state.metrics["loss"], trainer=trainer
        ... )
        >>> evaluator.add_event_handler(Events.COMPLETED, handler)
        >>> to_save = {"trainer": trainer, "model": model, "early_stopping": handler}
    """

    def __init__(
        self,
        patience: int,
        score_function: Callable[[Engine], float],
        trainer: Engine,
        min_delta: float = 0.0,
        cumulative_delta: bool = False,
        min_delta_mode: Literal["abs", "rel"] = "abs",
        mode: Literal["min", "max"] = "max",
        *,
        threshold: float | None = None,
        cumulative: bool | None = None,
        threshold_mode: Literal["abs", "rel"] | None = None,
    ) -> None:
        min_delta = _pick("min_delta", min_delta, 0.0, "threshold", threshold)
        cumulative_delta = _pick(
            "cumulative_delta", cumulative_delta, False, "cumulative", cumulative
        )
        min_delta_mode = _pick(
            "min_delta_mode", min_delta_mode, "abs", "threshold_mode", threshold_mode
        )
        if not callable(score_function):
            raise TypeError(
                f"score_function should be a callable taking an Engine, got {score_function!r}"
            )
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience should be an int >= 1, got {patience!r}")
        if not isinstance(trainer, Engine):
            raise TypeError(f"trainer should be an Engine, got {type(trainer).__name__}")
        if not isinstance(min_delta, int | float) or min_delta < 0:
            raise ValueError(f"min_delta should be a number >= 0, got {min_delta!r}")
        if min_delta_mode not in ("abs", "rel"):
            raise ValueError(f"min_delta_mode should be 'abs' or 'rel', got {min_delta_mode!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode should be 'min' or 'max', got {mode!r}")
        self.patience = patience
        self.score_function = score_function
        self.trainer = trainer
        self.min_delta = float(min_delta)
        self.cumulative_delta = bool(cumulative_delta)
        self.min_delta_mode = min_delta_mode
        self.mode = mode
        self.counter = 0
        self.best_score: float | None = None
        # Set by load_state_dict so that the reset registered by ``attach`` on the resumed
        # run's STARTED keeps the loaded state instead of wiping it.
        self._just_loaded = False

    def __call__(self, engine: Engine) -> None:
        """Read the score from ``engine`` and count or reset the patience."""
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
        if not self.cumulative_delta:
            better = max if self.mode == "max" else min
            self.best_score = better(score, self.best_score)
        self._no_improvement(score)

    def _improves(self, score: float) -> bool:
        assert self.best_score is not None
        delta = self.min_delta if self.mode == "max" else -self.min_delta
        if self.min_delta_mode == "abs":
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

    def reset(self) -> None:
        """Forget the best score and the count."""
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
        """Check on ``event`` of ``engine``; reset on ``reset_event`` of ``reset_engine``.

        Unlike Ignite, no reset is registered unless ``reset_engine`` is given: resetting on
        the evaluator's own STARTED would undo every check. A reset that fires right after
        ``load_state_dict`` (the resumed run's STARTED) keeps the loaded state.

        Args:
            engine: the engine whose event triggers the check (usually the evaluator).
            event: the triggering event.
            reset_engine: the engine whose ``reset_event`` resets the handler (usually the
                trainer), or None for no reset.
            reset_event: the resetting event.

        Example:
            >>> handler.attach(evaluator, reset_engine=trainer)
        """
        engine.add_event_handler(event, self)
        if reset_engine is not None:
            reset_engine.add_event_handler(reset_event, self._reset_unless_loaded)

    def _reset_unless_loaded(self, *args: Any) -> None:
        if self._just_loaded:
            self._just_loaded = False
            return
        self.reset()

    def state_dict(self) -> dict[str, Any]:
        """Return ``{"counter": int, "best_score": float | None}``."""
        return {"counter": self.counter, "best_score": self.best_score}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore ``counter`` and ``best_score`` saved by ``state_dict``.

        Raises:
            ValueError: if a key is missing.
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
        self._just_loaded = True
