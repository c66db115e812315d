"""ProgressBar: a tqdm bar per epoch, drawn by the main process only."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm

import distengine.distributed as idist
from distengine.engine import Engine, Events
from distengine.handlers._scalars import (
    EVENT_ORDER,
    check_metric_names,
    check_state_attributes,
    collect,
    event_counter,
    is_filtered,
    max_count,
)
from distengine.handlers._scalars import event_name as name_of

# Ignite's default: position, percentage, bar, chosen values, elapsed and remaining time.
_DEFAULT_BAR_FORMAT = (
    "{desc}[{n_fmt}/{total_fmt}] {percentage:3.0f}%|{bar}{postfix} [{elapsed}<{remaining}]"
)
# Without a known total there is no bar, percentage or remaining time to show.
_UNKNOWN_TOTAL_FORMAT = "{desc}[{n_fmt}/?]{postfix} [{elapsed}]"


class ProgressBar:
    """A tqdm progress bar that shows the position in the epoch and chosen values.

    Only the main process (``idist.is_main_process()``) draws: on other ranks ``attach``
    registers nothing and ``log_message`` prints nothing, so a 2-rank job shows one bar.
    The bar restarts every epoch. When the epoch length is unknown (an iterator without
    ``len`` in its first epoch) the bar counts iterations without a total.

    The bar is redrawn at tqdm's pace (every ``mininterval`` seconds, 0.1 by default),
    not on every event as in Ignite: drawing costs about 0.3 ms, which a fast training
    step would pay two or three times per iteration. Pass ``mininterval=0`` to draw on
    every event.

    Args:
        persist: keep each finished bar on screen instead of erasing it.
        bar_format: tqdm's ``bar_format``; None uses tqdm's own default. The default
            (Ignite's) shows the description, position, percentage, the bar, the chosen
            values and the elapsed and remaining time.
        **tqdm_kwargs: passed to ``tqdm`` (e.g. ``file``, ``desc``, ``ncols``, ``mininterval``).

    In a Jupyter notebook the bar is tqdm's notebook widget (``tqdm.autonotebook``).

    Raises:
        ModuleNotFoundError: tqdm cannot be imported.

    Example:
        >>> from distengine.metrics import RunningAverage
        >>> RunningAverage(output_transform=lambda loss: loss).attach(trainer, "loss")
        >>> pbar = ProgressBar(persist=True)
        >>> pbar.attach(trainer, metric_names=["loss"], output_transform=lambda out: {"batch": out})
        >>> state = trainer.run(loader, max_epochs=2)  # on stderr, one bar per epoch:
        >>> # Epoch [2/2]: [2/4]  50%|#####     , loss=0.31, batch=0.29 [00:00<00:00]
    """

    def __init__(
        self,
        persist: bool = False,
        bar_format: str | None = _DEFAULT_BAR_FORMAT,
        **tqdm_kwargs: Any,
    ) -> None:
        if bar_format is not None and not isinstance(bar_format, str):
            raise TypeError(f"bar_format should be a str or None, got {type(bar_format).__name__}")
        self.persist = persist
        self.bar_format = bar_format
        self.tqdm_kwargs = tqdm_kwargs
        try:
            from tqdm.autonotebook import tqdm as bar_class
        except ImportError:
            raise ModuleNotFoundError(
                "This submodule requires tqdm to be installed: pip install tqdm"
            ) from None
        self._bar_class = bar_class
        self.pbar: tqdm | None = None
        # Value of the bar's counter (iteration or epoch) when the current bar's span began
        # (run start or previous close); gives the position while the total is unknown.
        self._offset = 0
        self._counter = "iteration"

    def log_message(self, message: str) -> None:
        """Prints ``message`` above the bar without breaking it (main process only).

        Example:
            >>> import sys
            >>> pbar = ProgressBar(file=sys.stdout)
            >>> pbar.log_message(f"epoch {trainer.state.epoch}: val acc {0.8125:.3f}")
            epoch 0: val acc 0.812
        """
        if idist.is_main_process():
            self._bar_class.write(message, file=self.tqdm_kwargs.get("file"))

    def attach(
        self,
        engine: Engine,
        metric_names: str | list[str] | None = None,
        output_transform: Callable[[Any], Any] | None = None,
        event_name: Any = Events.ITERATION_COMPLETED,
        closing_event_name: Any = Events.EPOCH_COMPLETED,
        state_attributes: list[str] | None = None,
    ) -> None:
        """Draws the bar on ``engine``.

        Args:
            engine: the engine to follow.
            metric_names: names in ``engine.state.metrics`` to show, or ``"all"``. Values
                that are already reduced across ranks (every distengine metric) show the
                job's value, not rank 0's.
            output_transform: maps ``engine.state.output`` to a number (shown as
                ``output``) or a ``{name: value}`` dict; values may be numbers, 0-d or 1-d
                tensors, or strings. Shows this rank's output.
            event_name: event that advances the bar (may be filtered, e.g.
                ``Events.ITERATION_COMPLETED(every=10)``).
            closing_event_name: unfiltered event that closes the bar; must fire after
                ``event_name``.
            state_attributes: names of ``engine.state`` attributes to show (numbers,
                0-d or 1-d tensors, strings), e.g. values set by a state scheduler.

        Raises:
            ValueError: if ``event_name`` is not an event of ``engine``, or
                ``closing_event_name`` is filtered or does not come after ``event_name``.
            TypeError: if ``metric_names`` is not None, ``"all"`` or a list of str, or
                ``state_attributes`` is not a list of str.

        Example:
            >>> ProgressBar().attach(trainer, output_transform=lambda loss: {"loss": loss})
        """
        metric_names = check_metric_names(metric_names)
        state_attributes = check_state_attributes(state_attributes)
        if not engine.has_registered_events(event_name):
            raise ValueError(
                f"Logging event {getattr(event_name, 'name', event_name)} is not in allowed "
                "events for this engine"
            )
        if output_transform is not None and not callable(output_transform):
            raise TypeError(
                f"output_transform should be callable or None, got {type(output_transform).__name__}"
            )
        if is_filtered(closing_event_name):
            raise ValueError(
                f"closing_event_name should not be a filtered event, got {closing_event_name!r}"
            )
        first, last = name_of(event_name), name_of(closing_event_name)
        if first in EVENT_ORDER and last in EVENT_ORDER:
            if EVENT_ORDER.index(first) >= EVENT_ORDER.index(last):
                raise ValueError(
                    f"Logging event {first} should be called before closing event {last}"
                )
        if not idist.is_main_process():
            return
        self._counter = event_counter(event_name)
        engine.add_event_handler(Events.STARTED, self._mark)
        engine.add_event_handler(
            event_name,
            self._update,
            event_name,
            closing_event_name,
            metric_names,
            output_transform,
            state_attributes,
        )
        engine.add_event_handler(closing_event_name, self._close)
        if last != "COMPLETED":
            # A run that ends early (terminate) never reaches the closing event.
            engine.add_event_handler(Events.COMPLETED, self._close)

    def _update(
        self,
        engine: Engine,
        event: Any,
        closing_event: Any,
        metric_names: list[str] | str | None,
        output_transform: Callable[[Any], Any] | None,
        state_attributes: list[str] | None,
    ) -> None:
        state = engine.state
        counter = event_counter(event)
        count = getattr(state, counter)
        total = max_count(event, state)
        desc = self._description(engine, closing_event)
        values = collect(
            engine,
            metric_names,
            output_transform,
            separator="_",
            allow_text=True,
            state_attributes=state_attributes,
        )
        position = (count - 1) % total + 1 if total else count - self._offset
        if self.pbar is None:
            bar_format = self.bar_format
            if total is None and bar_format == _DEFAULT_BAR_FORMAT:
                bar_format = _UNKNOWN_TOTAL_FORMAT
            # The first frame already shows this event's position, description and values.
            self.pbar = self._bar_class(
                total=total,
                initial=position,
                desc=f"{desc}: ",  # as set_description writes it
                postfix=values or None,
                leave=self.persist,
                bar_format=bar_format,
                **{k: v for k, v in self.tqdm_kwargs.items() if k != "desc"},
            )
            return
        if total is not None and self.pbar.total is None:
            self.pbar.total = total
        self.pbar.set_description(desc, refresh=False)
        if values:
            self.pbar.set_postfix(values, refresh=False)
        self.pbar.update(position - self.pbar.n)

    def _description(self, engine: Engine, closing_event: Any) -> str:
        state = engine.state
        desc = self.tqdm_kwargs.get("desc")
        if desc is None:
            desc = "Iteration" if state.max_epochs == 1 else "Epoch"
        if name_of(closing_event) in ("EPOCH_STARTED", "EPOCH_COMPLETED"):
            closes = state.max_epochs
            if closes is None:
                desc += f" [{state.epoch}]"
            elif closes > 1:
                desc += f" [{state.epoch}/{closes}]"
        return desc

    def _mark(self, engine: Engine) -> None:
        self._offset = getattr(engine.state, self._counter)

    def _close(self, engine: Engine) -> None:
        self._mark(engine)
        if self.pbar is None:
            return
        self.pbar.close()
        self.pbar = None
