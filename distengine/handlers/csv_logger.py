"""CSVLogger: one CSV row per logged event, written through fsspec by the main process."""

from __future__ import annotations

import csv
import io
import posixpath
from typing import Any

import fsspec

from distengine.handlers.scalar_logger import ScalarLogger

_LABELS = ("epoch", "iteration")


class CSVLogger(ScalarLogger):
    """Writes logged values to a CSV file, local or at an fsspec URL (``s3://...``).

    Each logged event appends one row: ``epoch`` and ``iteration`` (of the engine that was
    logged, or of the trainer with ``global_step_from_engine(trainer)``), then one column
    per ``{tag}/{name}``, empty where that event has no value. Columns are added as new
    names appear (the file is then rewritten once with the wider header). Only the main
    process opens and writes the file. Each row is flushed: on a local disk it is readable
    at once; object stores publish the object when the logger is closed. Call ``close()``
    (or use the logger as a context manager) when the run ends.

    Args:
        path_or_url: file path or fsspec URL of the CSV file (a ``str``: ``Path`` breaks
            URLs). Parent folders of a local path are created.
        append: keep the rows of an existing file (for a resumed run) instead of replacing
            it. Rows logged after the checkpoint the run resumed from then appear twice,
            the resumed run's last; ``scripts/plot_csv.py`` keeps the last value.
        **storage_options: passed to fsspec (e.g. ``key``, ``secret``, ``client_kwargs``).

    Example:
        >>> from distengine.handlers import CSVLogger
        >>> from distengine.handlers.base_logger import global_step_from_engine
        >>> from distengine.metrics import Accuracy
        >>> Accuracy().attach(evaluator, "accuracy")
        >>> @trainer.on(Events.EPOCH_COMPLETED)
        ... def validate():
        ...     evaluator.run(loader)
        >>> with CSVLogger("runs/exp1/log.csv") as csv_logger:
        ...     _ = csv_logger.attach_output_handler(
        ...         trainer, Events.ITERATION_COMPLETED(every=2), tag="training",
        ...         output_transform=lambda loss: {"loss": loss})
        ...     _ = csv_logger.attach_output_handler(
        ...         evaluator, Events.COMPLETED, tag="validation", metric_names=["accuracy"],
        ...         global_step_transform=global_step_from_engine(trainer))
        ...     _ = csv_logger.attach_opt_params_handler(trainer, Events.EPOCH_STARTED, optimizer)
        ...     state = trainer.run(loader, max_epochs=2)
        >>> print(open("runs/exp1/log.csv").read())  # doctest: +ELLIPSIS
        epoch,iteration,lr/group_0,training/loss,validation/accuracy
        1,0,0.1,,
        1,2,,1.29...,
        1,4,,0.87...,
        1,4,,,0.5
        2,4,0.1,,
        ...
    """

    def __init__(self, path_or_url: str, append: bool = False, **storage_options: Any) -> None:
        if not isinstance(path_or_url, str) or not path_or_url:
            raise TypeError(
                f"path_or_url should be a non-empty str (path or URL), got {path_or_url!r}"
            )
        self.path_or_url = path_or_url
        self.append = append
        self._storage_options = storage_options
        self._columns: list[str] = []
        self._file: Any = None
        self._writer: Any = None
        self._opened_once = False

    def _write(self, values: dict[str, float | int], epoch: int, iteration: int, step: int) -> None:
        row: dict[str, Any] = {"epoch": epoch, "iteration": iteration, **values}
        new = [name for name in row if name not in self._columns]
        if self._file is None or new:
            self._open(new)
        self._writer.writerow([row.get(name, "") for name in self._columns])
        self._file.flush()

    def _open(self, new_columns: list[str]) -> None:
        """(Re)write the file with the current columns plus ``new_columns``, keep it open."""
        fs, path = fsspec.core.url_to_fs(self.path_or_url, **self._storage_options)
        keep_existing = self._opened_once or self.append
        header: list[str] = []
        rows: list[list[str]] = []
        if self._file is not None:
            self._file.close()
            self._file = None
        if keep_existing and fs.exists(path):
            with fs.open(path, "r", newline="") as f:
                table = list(csv.reader(io.StringIO(f.read())))
            if table:
                header, rows = table[0], table[1:]
        if not self._opened_once and header and list(header[: len(_LABELS)]) != list(_LABELS):
            raise ValueError(
                f"cannot append to {self.path_or_url}: expected a CSV whose header starts with "
                f"{','.join(_LABELS)}, got {','.join(header[:2])!r}"
            )
        columns = header or list(_LABELS)
        columns += [c for c in self._columns + new_columns if c not in columns]
        if "file" in fs.protocol:  # object stores have no folders to create
            fs.makedirs(posixpath.dirname(path) or ".", exist_ok=True)
        self._file = fs.open(path, "w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(columns)
        for old in rows:
            self._writer.writerow(old + [""] * (len(columns) - len(old)))
        self._columns = columns
        self._opened_once = True

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._writer = None
