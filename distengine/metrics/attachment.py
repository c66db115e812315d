"""The per-engine reducer: runs every attached metric and reduces them in one collective.

``Metric.attach`` does not add one handler per metric and event, as Ignite does; it adds
the metric to the one reducer of the engine (created by the first ``attach`` and kept on the
engine). At each completion event the reducer reduces the declared state of *all* metrics
that complete then in a single ``all_gather`` (see :mod:`distengine.metrics.reduction`), so
the number of collectives does not grow with the number of metrics.

Usages (when a metric is reset / written):

- ``epoch_wise``: reset at ``EPOCH_STARTED``, written at ``EPOCH_COMPLETED`` (reduced);
- ``batch_wise``: reset at ``ITERATION_STARTED``, written at ``ITERATION_COMPLETED`` (reduced,
  so one collective per iteration for all batch-wise metrics together);
- ``running`` (alias ``running_batch_wise``) and ``single_epoch_running_batch_wise``, for
  :class:`~distengine.metrics.RunningAverage`: reset at ``STARTED`` (or ``EPOCH_STARTED``),
  written at ``ITERATION_COMPLETED`` from this rank's state (no collective); at world size
  > 1 the epoch's collective also carries them and ``EPOCH_COMPLETED`` writes their mean over
  ranks.

Every metric is updated once per iteration, at ``ITERATION_COMPLETED``, in attach order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import distengine.distributed as idist
from distengine.engine import Events
from distengine.metrics._output import write_result
from distengine.metrics.metric import Metric, NotComputableError
from distengine.metrics.reduction import reduce_states

__all__ = ["MetricsReducer", "reducer_of", "USAGES"]

_ENGINE_ATTR = "_distengine_metrics_reducer"


@dataclass(frozen=True)
class _Usage:
    started: Any  # the event that resets the metric
    completes: str  # "epoch", "iteration" or "running"


USAGES: dict[str, _Usage] = {
    "epoch_wise": _Usage(Events.EPOCH_STARTED, "epoch"),
    "batch_wise": _Usage(Events.ITERATION_STARTED, "iteration"),
    "running": _Usage(Events.STARTED, "running"),
    "running_batch_wise": _Usage(Events.STARTED, "running"),
    "single_epoch_running_batch_wise": _Usage(Events.EPOCH_STARTED, "running"),
}


@dataclass(frozen=True)
class _Entry:
    metric: Metric
    name: str
    usage: str


def reducer_of(engine: Any, create: bool) -> MetricsReducer | None:
    """The engine's reducer; made (and stored on the engine) when ``create`` is true."""
    reducer = getattr(engine, _ENGINE_ATTR, None)
    if reducer is None and create:
        reducer = MetricsReducer(engine)
        setattr(engine, _ENGINE_ATTR, reducer)
    return reducer


def _mid_epoch(engine: Any) -> bool:
    """True at an ``EPOCH_STARTED`` that resumes an epoch part-way through."""
    state = engine.state
    length = state.epoch_length
    return bool(length) and state.epoch >= 1 and state.iteration > (state.epoch - 1) * length


class MetricsReducer:
    """Runs the metrics attached to one engine; made by :meth:`Metric.attach`.

    Example:
        >>> Accuracy().attach(evaluator, "acc")  # doctest: +SKIP
        >>> Loss(nll).attach(evaluator, "loss")  # doctest: +SKIP
        >>> # both reduced in one all_gather at EPOCH_COMPLETED
    """

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._entries: list[_Entry] = []
        self._handlers: dict[Any, Any] = {}
        # (completes, started) -> distinct metrics; rebuilt when membership changes
        self._groups: dict[tuple[str | None, Any], list[Metric]] = {}

    # --- membership -------------------------------------------------------------------
    def add(self, metric: Metric, name: str, usage: str) -> None:
        entry = _Entry(metric, name, usage)
        if entry in self._entries:
            return
        if not any(e.metric is metric and e.name == name for e in self._entries):
            self._engine.register_rank_state(f"metric:{name}", metric)
        self._entries.append(entry)
        self._sync_handlers()

    def remove(self, metric: Metric, usage: str) -> None:
        gone = [e for e in self._entries if e.metric is metric and e.usage == usage]
        self._entries = [e for e in self._entries if e not in gone]
        for name in {e.name for e in gone}:
            if not any(e.metric is metric and e.name == name for e in self._entries):
                self._engine.unregister_rank_state(f"metric:{name}")
        self._sync_handlers()

    def has(self, metric: Metric, usage: str) -> bool:
        return any(e.metric is metric and e.usage == usage for e in self._entries)

    def _sync_handlers(self) -> None:
        """Registers the handlers the current entries need; removes the others."""
        self._groups.clear()
        kinds = {USAGES[e.usage].completes for e in self._entries}
        wanted = {USAGES[e.usage].started for e in self._entries}
        if self._entries:
            wanted.add(Events.ITERATION_COMPLETED)
        if kinds & {"epoch", "running"}:
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

    # --- event handlers ---------------------------------------------------------------
    def _metrics(self, completes: str | None = None, started: Any = None) -> list[Metric]:
        """Distinct metrics (attach order) with a usage that completes / starts as given."""
        key = (completes, started)
        if key not in self._groups:
            seen: dict[int, Metric] = {}
            for e in self._entries:
                usage = USAGES[e.usage]
                if completes is not None and usage.completes != completes:
                    continue
                if started is not None and usage.started != started:
                    continue
                seen.setdefault(id(e.metric), e.metric)
            self._groups[key] = list(seen.values())
        return self._groups[key]

    def _reset(self, event: Any, engine: Any) -> None:
        for metric in self._metrics(started=event):
            if metric._restored:
                # State loaded from a checkpoint: keep it if this start resumes the run
                # (STARTED) or the interrupted epoch (EPOCH_STARTED mid-epoch).
                metric._restored = False
                if event == Events.STARTED or (
                    event == Events.EPOCH_STARTED and _mid_epoch(engine)
                ):
                    self._show_restored(engine, metric)
                    continue
            metric.reset()

    def _show_restored(self, engine: Any, metric: Metric) -> None:
        """Writes a restored running value at once, as the interrupted run showed it."""
        if any(
            e.metric is metric and USAGES[e.usage].completes == "running" for e in self._entries
        ):
            self._write(engine, [metric], None, {"running"}, [metric])

    def _on_started(self, engine: Any) -> None:
        self._reset(Events.STARTED, engine)

    def _on_epoch_started(self, engine: Any) -> None:
        self._reset(Events.EPOCH_STARTED, engine)

    def _on_iteration_started(self, engine: Any) -> None:
        self._reset(Events.ITERATION_STARTED, engine)

    def _on_iteration_completed(self, engine: Any) -> None:
        for metric in self._metrics():
            metric.iteration_completed(engine)
        batch_wise = self._metrics(completes="iteration")
        if batch_wise:
            self._write(engine, batch_wise, reduce_states(batch_wise), {"iteration"}, ())
        running = self._metrics(completes="running")
        if running:
            self._write(engine, running, None, {"running"}, running)

    def _on_epoch_completed(self, engine: Any) -> None:
        running = self._metrics(completes="running") if idist.get_world_size() > 1 else []
        group = self._metrics(completes="epoch") + running
        if group:
            self._write(engine, group, reduce_states(group), {"epoch", "running"}, running)

    def _write(
        self,
        engine: Any,
        metrics: list[Metric],
        reduced: list[dict[str, Any]] | None,
        kinds: set[str],
        tolerate: list[Metric] | tuple[()],
    ) -> None:
        """Computes each metric from its reduced (or local) state; writes it under the names
        of its entries whose usage completes as one of ``kinds``."""
        for i, metric in enumerate(metrics):
            try:
                if reduced is None:
                    result = metric._compute_local()
                else:
                    with metric._state_view(reduced[i]):
                        result = metric.compute()
            except NotComputableError:
                # A running value that no batch has set yet (e.g. padding only): keep the last.
                if any(metric is t for t in tolerate):
                    continue
                raise
            for e in self._entries:
                if e.metric is metric and USAGES[e.usage].completes in kinds:
                    write_result(engine, e.name, result)
