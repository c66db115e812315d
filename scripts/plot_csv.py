"""Plot a run's CSV log (written by ``distengine.handlers.CSVLogger``) as a PNG, per epoch.

Usage:
    python scripts/plot_csv.py runs/exp1/log.csv                 # writes runs/exp1/log.png
    python scripts/plot_csv.py s3://bucket/exp1/log.csv --columns training/loss  # ./log.png

Columns whose name contains "loss" go to a loss panel, those containing "acc" to an
accuracy panel (or pass ``--columns``). Each value is averaged over its epoch (a
per-iteration training loss becomes one point per epoch). Rows written twice for the same
iteration -- a resumed run re-logging what came after its checkpoint -- count once, the
last one. Draws with matplotlib when it is installed, otherwise with Pillow (installed with
``distengine[tensorboard]``; ``pip install pillow`` otherwise).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import posixpath
from collections import defaultdict

import fsspec

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def read_per_epoch(url: str, columns: list[str] | None = None, **storage_options) -> dict:
    """Read the CSV and return ``{column: [(epoch, mean value), ...]}`` sorted by epoch.

    Raises:
        ValueError: if the file has no ``epoch``/``iteration`` columns or a requested
            column is missing.
    """
    with fsspec.open(url, "r", newline="", **storage_options) as f:
        rows = list(csv.DictReader(io.StringIO(f.read())))
    header = list(rows[0]) if rows else []
    if header[:2] != ["epoch", "iteration"]:
        raise ValueError(
            f"expected a CSVLogger file whose header starts with epoch,iteration; got {header[:2]} in {url}"
        )
    names = [c for c in header[2:] if columns is None or c in columns]
    missing = sorted(set(columns or ()) - set(header))
    if missing:
        raise ValueError(f"columns {missing} are not in {url}; it has {header[2:]}")
    last: dict[tuple[str, int], tuple[int, float]] = {}  # (column, iteration) -> (epoch, value)
    for row in rows:
        for name in names:
            if row.get(name):
                last[(name, int(row["iteration"]))] = (int(row["epoch"]), float(row[name]))
    per_epoch: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (name, _), (epoch, value) in last.items():
        per_epoch[name][epoch].append(value)
    return {
        name: [(e, sum(v) / len(v)) for e, v in sorted(epochs.items())]
        for name, epochs in per_epoch.items()
    }


def panels_for(series: dict, explicit: bool) -> list[tuple[str, list[str]]]:
    """Group columns into titled panels: loss, accuracy (and the rest if chosen explicitly)."""
    loss = [n for n in series if "loss" in n.lower()]
    acc = [n for n in series if "acc" in n.lower() and n not in loss]
    other = [n for n in series if n not in loss and n not in acc] if explicit else []
    return [(t, ns) for t, ns in (("loss", loss), ("accuracy", acc), ("values", other)) if ns]


def plot_matplotlib(series: dict, panels: list, output: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (title, names) in zip(axes[0], panels):
        for name in names:
            epochs, values = zip(*series[name])
            ax.plot(epochs, values, marker="o", label=name)
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(output)
    plt.close(fig)


def _ticks(low: float, high: float, n: int = 5) -> list[float]:
    return [low + (high - low) * i / (n - 1) for i in range(n)]


class _Frame:
    """Maps (epoch, value) to pixels inside one panel's box."""

    def __init__(self, box: tuple[int, int, int, int], points: list[tuple[int, float]]):
        self.x0, self.x1, self.y0, self.y1 = box
        self.e_lo, self.e_hi = min(e for e, _ in points), max(e for e, _ in points)
        v_lo, v_hi = min(v for _, v in points), max(v for _, v in points)
        pad = (v_hi - v_lo) * 0.05 or abs(v_hi) * 0.05 or 1.0
        self.v_lo, self.v_hi = v_lo - pad, v_hi + pad

    def xy(self, epoch: float, value: float) -> tuple[float, float]:
        x = self.x0 + (self.x1 - self.x0) * (epoch - self.e_lo) / ((self.e_hi - self.e_lo) or 1)
        y = self.y1 - (self.y1 - self.y0) * (value - self.v_lo) / (self.v_hi - self.v_lo)
        return x, y


def plot_pillow(series: dict, panels: list, output: str) -> None:
    from PIL import Image, ImageDraw, ImageFont

    pw, ph, left, right, top, bottom = 480, 360, 64, 16, 32, 44
    image = Image.new("RGB", (pw * len(panels), ph), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for p, (title, names) in enumerate(panels):
        f = _Frame(
            (p * pw + left, (p + 1) * pw - right, top, ph - bottom),
            [pt for n in names for pt in series[n]],
        )
        draw.rectangle([f.x0, f.y0, f.x1, f.y1], outline="black")
        draw.text(((f.x0 + f.x1) / 2, 8), title, fill="black", font=font, anchor="mt")
        draw.text(((f.x0 + f.x1) / 2, ph - 14), "epoch", fill="black", font=font, anchor="mm")
        for v in _ticks(f.v_lo, f.v_hi):
            y = f.xy(f.e_lo, v)[1]
            draw.line([f.x0 - 4, y, f.x0, y], fill="black")
            draw.text((f.x0 - 6, y), f"{v:.3g}", fill="black", font=font, anchor="rm")
        for e in range(f.e_lo, f.e_hi + 1, max(1, round((f.e_hi - f.e_lo) / 8))):
            x = f.xy(e, f.v_lo)[0]
            draw.line([x, f.y1, x, f.y1 + 4], fill="black")
            draw.text((x, f.y1 + 6), str(e), fill="black", font=font, anchor="mt")
        for i, name in enumerate(names):
            colour = COLOURS[i % len(COLOURS)]
            pts = [f.xy(e, v) for e, v in series[name]]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
            for x, y in pts:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
            ly = f.y0 + 8 + 14 * i
            draw.rectangle([f.x1 - 150, ly - 4, f.x1 - 142, ly + 4], fill=colour)
            draw.text((f.x1 - 138, ly), name, fill="black", font=font, anchor="lm")
    image.save(output, format="PNG")


def plot(url: str, output: str, columns: list[str] | None = None, backend: str = "auto") -> str:
    """Write the PNG for the CSV at ``url`` to ``output``; return the backend used.

    Raises:
        ValueError: if there is nothing to plot or ``backend`` is unknown.
        ImportError: if neither matplotlib nor Pillow is installed.
    """
    if backend not in ("auto", "matplotlib", "pillow"):
        raise ValueError(f"backend should be 'auto', 'matplotlib' or 'pillow', got {backend!r}")
    series = read_per_epoch(url, columns)
    panels = panels_for(series, explicit=columns is not None)
    if not panels:
        raise ValueError(
            f"nothing to plot in {url}: no column with 'loss' or 'acc' in its name "
            f"(has {sorted(series)}); choose columns with --columns"
        )
    if backend == "auto":
        try:
            import matplotlib  # noqa: F401

            backend = "matplotlib"
        except ImportError:
            backend = "pillow"
    try:
        (plot_matplotlib if backend == "matplotlib" else plot_pillow)(series, panels, output)
    except ImportError as exc:
        raise ImportError(
            f"plotting with {backend} needs it installed: pip install matplotlib (or pillow)"
        ) from exc
    return backend


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", help="path or fsspec URL of the CSV log")
    parser.add_argument("-o", "--output", help="PNG to write (default: the CSV's name, .png)")
    parser.add_argument("--columns", help="comma-separated columns to plot (default: loss/acc)")
    parser.add_argument("--backend", default="auto", choices=["auto", "matplotlib", "pillow"])
    args = parser.parse_args(argv)
    if args.output:
        output = args.output
    elif "://" in args.csv:  # a URL: write next to the current folder, not into a bucket path
        output = posixpath.splitext(posixpath.basename(args.csv))[0] + ".png"
    else:
        output = os.path.splitext(args.csv)[0] + ".png"
    columns = args.columns.split(",") if args.columns else None
    used = plot(args.csv, output, columns, args.backend)
    print(f"wrote {output} ({used})")


if __name__ == "__main__":
    main()
