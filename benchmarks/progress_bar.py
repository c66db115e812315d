"""Per-iteration cost of a ProgressBar (output, a metric-like value and the description), vs Ignite's.

Run: ``python benchmarks/progress_bar.py`` (add ``--quick`` for a short run).

Each system runs a no-op engine over N iterations twice: without a bar and with
``ProgressBar().attach(engine, output_transform=lambda x: {"loss": x})`` writing to
``/dev/null``; the bar's cost is the difference divided by N. Trials are interleaved
(distengine, Ignite, distengine, ...); each figure is the median with the min-max spread.
distengine's bar redraws at tqdm's pace (``mininterval``, 0.1 s); Ignite's redraws on
every event.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time


def _run(engine_cls, bar_cls, n_iters: int, with_bar: bool) -> float:
    engine = engine_cls(lambda e, b: 0.5)
    if with_bar:
        sink = open(os.devnull, "w")  # noqa: SIM115  (closed below)
        bar_cls(file=sink).attach(engine, output_transform=lambda x: {"loss": x})
    gc.collect()
    t0 = time.perf_counter()
    engine.run(list(range(n_iters)), max_epochs=1)
    elapsed = time.perf_counter() - t0
    if with_bar:
        sink.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n_iters, trials = (2_000, 3) if args.quick else (20_000, 7)

    from distengine.engine import Engine
    from distengine.handlers import ProgressBar

    systems = {"distengine": (Engine, ProgressBar)}
    try:
        from ignite.engine import Engine as IEngine
        from ignite.handlers import ProgressBar as IProgressBar

        systems["ignite 0.5.5"] = (IEngine, IProgressBar)
    except ImportError:
        pass
    cost: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(trials):
        for name, (engine_cls, bar_cls) in systems.items():
            bare = _run(engine_cls, bar_cls, n_iters, with_bar=False)
            barred = _run(engine_cls, bar_cls, n_iters, with_bar=True)
            cost[name].append((barred - bare) / n_iters * 1e6)
    print(f"ProgressBar cost per iteration ({n_iters} iterations, median of {trials}, min-max)")
    print("| bar | µs per iteration |")
    print("| --- | --- |")
    for name, values in cost.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.1f} ({min(values):.1f}-{max(values):.1f}) |")


if __name__ == "__main__":
    main()
