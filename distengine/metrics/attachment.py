"""The per-engine reducer: runs every attached metric and reduces them in one collective.

``Metric.attach`` does not add one handler per metric and event, as Ignite does; it adds
the metric to the one reducer of the engine (created by the first ``attach`` and kept by the
engine as its ``"distengine.metrics"`` extension, :meth:`Engine.extension
<distengine.engine.Engine.extension>`). This module does not import
:mod:`distengine.metrics.metric`: ``Metric`` imports it (``attach`` uses :func:`reducer_of`). At each completion event the reducer reduces the declared state of *all* metrics
that complete then in a single ``all_gather`` (see :mod:`distengine.metrics.reduction`), so
the number of collectives does not grow with the number of metrics.

How a usage (:mod:`distengine.metrics.usage`) is run:

- written at ``EPOCH_COMPLETED`` (``epoch_wise``, ``BatchFiltered``, ``running_epoch_wise``):
  computed from the reduced state, all such metrics in one collective;
- reset at ``ITERATION_STARTED``, written at ``ITERATION_COMPLETED`` (``batch_wise``):
  reduced every iteration, all batch-wise metrics in one collective;
- reset at ``STARTED`` or ``EPOCH_STARTED``, written at ``ITERATION_COMPLETED``
  (``running_batch_wise``, ``single_epoch_running_batch_wise``): written every iteration
  from this rank's state (no collective); at world size > 1 the epoch's collective also
  carries them and ``EPOCH_COMPLETED`` writes their reduced value (for
  :class:`~distengine.metrics.RunningAverage`, the mean over ranks).

Every metric is updated at most once per iteration, at ``ITERATION_COMPLETED``, in attach
order (the parts of a ``MetricsLambda`` and the ``src`` of a ``RunningAverage`` first).
A metric with ``running_epoch_wise`` usage is updated at ``EPOCH_COMPLETED``; a
``RunningAverage`` then folds in its ``src``'s value reduced over all ranks (the same
collective).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

import distengine.distributed as idist
from distengine.engine import Events
from distengine.exceptions import NotComputableError
from distengine.metrics._output import write_result
from distengine.metrics._state import state_views
from distengine.metrics.reduction import reduce_states
from distengine.metrics.usage import MetricUsage

if TYPE_CHECKING:  # annotations only: metric.py imports this module
    from distengine.metrics.metric import Metric

__all__ = ["MetricsReducer", "reducer_of"]

EXTENSION_KEY = "distengine.metrics"
_STARTS = (Events.STARTED, Events.EPOCH_STARTED, Events.ITERATION_STARTED)
_UPDATES = (Events.ITERATION_COMPLETED, Events.EPOCH_COMPLETED)


@dataclass(frozen=True)
class _Plan:
    """What the reducer does for one usage."""

    started: Any  # the (unfiltered) event that resets the metric
    update: Any  # ITERATION_COMPLETED or EPOCH_COMPLETED
    update_filter: Any  # (engine, count) -> bool, or None
    completes: str  # "epoch", "iteration" or "running"


def _plan(usage: MetricUsage) -> _Plan:
    started, completed, update = usage.STARTED, usage.COMPLETED, usage.ITERATION_COMPLETED
    if started not in _STARTS or update not in _UPDATES or completed not in _UPDATES:
        raise ValueError(
            f"{type(usage).__name__}: a metric is reset at STARTED, EPOCH_STARTED or "
            "ITERATION_STARTED and updated and written at ITERATION_COMPLETED or "
            f"EPOCH_COMPLETED, got {started!r}, {update!r}, {completed!r}"
        )
    if completed == Events.EPOCH_COMPLETED:
        completes = "epoch"
    elif update == Events.EPOCH_COMPLETED:
        raise ValueError(
            f"{type(usage).__name__}: a metric updated at EPOCH_COMPLETED is written then"
        )
    else:
        completes = "iteration" if started == Events.ITERATION_STARTED else "running"
    for event in (started, completed):
        if getattr(event, "filter", None) is not None:
            raise ValueError(
                f"{type(usage).__name__}: only the update event may be filtered, got {event!r}"
            )
    return _Plan(started, update, getattr(update, "filter", None), completes)


def _same_usage(a: MetricUsage, b: MetricUsage) -> bool:
    """Same kind of usage (filters aside: ``BatchFiltered(every=2)`` is ``BatchFiltered()``)."""
    pa, pb = _plan(a), _plan(b)
    return type(a) is type(b) and (pa.started, pa.update, pa.completes) == (
        pb.started,
        pb.update,
        pb.completes,
    )


@dataclass(frozen=True, eq=False)
class _Entry:
    metric: Metric
    name: str
    usage: MetricUsage
    plan: _Plan


def reducer_of(engine: Any, create: bool) -> MetricsReducer | None:
    """The engine's reducer (its ``"distengine.metrics"`` extension); made when ``create``."""
    if not callable(getattr(engine, "extension", None)):
        raise TypeError(
            f"metrics attach to a distengine Engine (with Engine.extension), got {type(engine).__name__}"
        )
    return engine.extension(EXTENSION_KEY, MetricsReducer if create else None)


def _mid_epoch(engine: Any) -> bool:
    """True at an ``EPOCH_STARTED`` that resumes an epoch part-way through."""
    state = engine.state
    length = state.epoch_length
    return bool(length) and state.epoch >= 1 and state.iteration > (state.epoch - 1) * length


def _distinct(metrics: list[Metric]) -> list[Metric]:
    seen: dict[int, Metric] = {}
    for m in metrics:
        seen.setdefault(id(m), m)
    return list(seen.values())


class MetricsReducer:
    """Runs the metrics attached to one engine; made by :meth:`Metric.attach`.

    Example:
        >>> from distengine.metrics import Accuracy, Loss
        >>> Accuracy().attach(evaluator, "acc")
        >>> Loss(torch.nn.functional.cross_entropy).attach(evaluator, "loss")
        >>> # both reduced in one all_gather at EPOCH_COMPLETED
        >>> sorted(evaluator.run(loader).metrics)
        ['acc', 'loss']
    """

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._entries: list[_Entry] = []
        self._handlers: dict[Any, Any] = {}
        # metrics used by an entry (a lambda's part, a src) that were detached on their own:
        # no longer updated, and the entries using them no longer count as attached (Ignite)
        self._detached: set[int] = set()
        # what ITERATION_COMPLETED does, worked out once per change of the entries:
        # (metrics to update, or None when a filter decides per iteration; batch-wise
        # entries; running entries)
        self._iteration_plan: tuple[list[Metric] | None, list[_Entry], list[_Entry]] | None = None

    # --- membership -------------------------------------------------------------------
    def add(self, metric: Metric, name: str, usage: MetricUsage) -> None:
        plan = _plan(usage)
        self._detached -= {id(c) for c in metric._update_children()}
        for e in self._entries:
            if e.metric is metric and e.name == name and _same_usage(e.usage, usage):
                return
        if not any(e.metric is metric and e.name == name for e in self._entries):
            self._engine.register_rank_state(f"metric:{name}", metric)
        self._entries.append(_Entry(metric, name, usage, plan))
        self._sync_handlers()

    def remove(self, metric: Metric, usage: MetricUsage) -> None:
        gone = [e for e in self._entries if e.metric is metric and _same_usage(e.usage, usage)]
        if not gone and any(
            c is metric for e in self._entries for c in e.metric._update_children()
        ):
            self._detached.add(id(metric))
        self._entries = [e for e in self._entries if not any(e is g for g in gone)]
        for name in {e.name for e in gone}:
            if not any(e.metric is metric and e.name == name for e in self._entries):
                self._engine.unregister_rank_state(f"metric:{name}")
        self._sync_handlers()

    def has(self, metric: Metric, usage: MetricUsage) -> bool:
        if any(id(c) in self._detached for c in metric._update_children()):
            return False
        return any(e.metric is metric and _same_usage(e.usage, usage) for e in self._entries)

    def _sync_handlers(self) -> None:
        """Registers the handlers the current entries need; removes the others."""
        self._iteration_plan = None
        wanted = {e.plan.started for e in self._entries}
        if self._entries:
            wanted.add(Events.ITERATION_COMPLETED)
        if any(e.plan.completes in ("epoch", "running") for e in self._entries):
            wanted.add(Events.EPOCH_COMPLETED)
        table = {
            Events.STARTED: self._on_started,
            Events.EPOCH_STARTED: self._on_epoch_started,
            Events.ITERATION_STARTED: self._on_iteration_started,
            Events.ITERATION_COMPLETED: self._on_iteration_completed,
            Events.EPOCH_COMPLETED: self._on_epoch_completed,
        }
        for event, handler in table.items():
            if event in wanted and event not in self._handlers:
                self._engine.add_event_handler(event, handler)
                self._handlers[event] = handler
            elif event not in wanted and event in self._handlers:
                self._engine.remove_event_handler(self._handlers.pop(event), event)

    def _select(self, **conditions: Any) -> list[_Entry]:
        return [
            e
            for e in self._entries
            if all(getattr(e.plan, key) == value for key, value in conditions.items())
        ]

    # --- event handlers ---------------------------------------------------------------
    def _reset(self, event: Any, engine: Any) -> None:
        for metric in _distinct([e.metric for e in self._select(started=event)]):
            if metric._take_restored():
                # State loaded from a checkpoint: keep it if this start resumes the run
                # (STARTED) or the interrupted epoch (EPOCH_STARTED mid-epoch).
                if event == Events.STARTED or (
                    event == Events.EPOCH_STARTED and _mid_epoch(engine)
                ):
                    self._show_restored(engine, metric)
                    continue
            metric.reset()

    def _show_restored(self, engine: Any, metric: Metric) -> None:
        """Writes a restored running value at once, as the interrupted run showed it."""
        running = [e for e in self._select(completes="running") if e.metric is metric]
        if running:
            self._write(engine, running, reduce=False)

    def _on_started(self, engine: Any) -> None:
        self._reset(Events.STARTED, engine)

    def _on_epoch_started(self, engine: Any) -> None:
        self._reset(Events.EPOCH_STARTED, engine)

    def _on_iteration_started(self, engine: Any) -> None:
        self._reset(Events.ITERATION_STARTED, engine)

    def _to_update(self, engine: Any) -> list[Metric]:
        """The metrics to update at this ITERATION_COMPLETED, in order, each once."""
        to_update: list[Metric] = []
        for e in self._entries:
            if e.plan.update == Events.ITERATION_COMPLETED:
                flt = e.plan.update_filter
                if flt is not None and not flt(engine, engine.state.iteration):
                    continue
                to_update.extend(e.metric._update_children())
                if e.metric._updates_itself:
                    to_update.append(e.metric)
            else:  # updated at EPOCH_COMPLETED; what it reads is updated every iteration
                to_update.extend(e.metric._update_children())
        return [m for m in _distinct(to_update) if id(m) not in self._detached]

    def _on_iteration_completed(self, engine: Any) -> None:
        plan = self._iteration_plan
        if plan is None:
            filtered = any(
                e.plan.update == Events.ITERATION_COMPLETED and e.plan.update_filter is not None
                for e in self._entries
            )
            plan = self._iteration_plan = (
                None if filtered else self._to_update(engine),
                self._select(completes="iteration"),
                self._select(completes="running"),
            )
        metrics, batch_wise, running = plan
        if metrics is None:
            metrics = self._to_update(engine)
        if torch.is_grad_enabled():
            with torch.no_grad():  # once for all metrics, not once per metric
                for metric in metrics:
                    metric.iteration_completed(engine)
        else:
            for metric in metrics:
                metric.iteration_completed(engine)
        if batch_wise:
            self._write(engine, batch_wise, reduce=True)
        if running:
            self._write(engine, running, reduce=False)

    def _on_epoch_completed(self, engine: Any) -> None:
        late = self._select(update=Events.EPOCH_COMPLETED)
        folding = _distinct([e.metric for e in late if e.metric._reduced_children()])
        for metric in _distinct([e.metric for e in late]):
            if not any(metric is f for f in folding):
                metric.iteration_completed(engine)
        group = self._select(completes="epoch")
        if idist.get_world_size() > 1:
            group += self._select(completes="running")
        if not group:
            return
        reduced_ids = {id(f) for f in folding}
        units = _distinct(
            [u for e in group if id(e.metric) not in reduced_ids for u in e.metric._leaves()]
            + [c for f in folding for c in f._reduced_children()]
        )
        reduced = reduce_states(units)
        if folding:
            # Fold the reduced value of each src in; the folded value is then global.
            with state_views(units, reduced):
                for metric in folding:
                    metric.iteration_completed(engine)
            for metric in folding:
                for child in metric._reduced_children():
                    child.reset()
        self._write(engine, group, reduce=True, reduced=(units, reduced), local_ids=reduced_ids)

    def _write(
        self,
        engine: Any,
        entries: list[_Entry],
        reduce: bool,
        reduced: tuple[list[Metric], list[dict[str, Any]] | None] | None = None,
        local_ids: set[int] | frozenset[int] = frozenset(),
    ) -> None:
        """Computes each entry's metric from its reduced (or local) state and writes it."""
        metrics = _distinct([e.metric for e in entries])
        if reduce and reduced is None:
            units = _distinct([u for m in metrics for u in m._leaves()])
            reduced = (units, reduce_states(units))
        results: dict[int, Any] = {}
        with_views = reduced if reduce else None
        for metric in metrics:
            try:
                if with_views is None or id(metric) in local_ids:
                    results[id(metric)] = metric._compute_local()
                else:
                    units, values = with_views
                    with state_views(units, values), metric._state_view({}):
                        results[id(metric)] = metric.compute()
            except NotComputableError:
                # A running value that no batch has set yet (e.g. padding only): keep the last.
                if any(e.metric is metric and e.plan.completes == "running" for e in entries):
                    continue
                raise
        for e in entries:
            if id(e.metric) in results:
                write_result(engine, e.name, results[id(e.metric)], e.metric._metrics_result_mode)
