"""The engine's view of its data: which pass it is in, how far, and how to restart mid-pass."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["DataPass", "find_resumable_sampler"]


def find_resumable_sampler(data: Any) -> Any | None:
    """The sampler of ``data`` that can start mid-pass (``set_start``), if it has one."""
    candidates = []
    batch_sampler = getattr(data, "batch_sampler", None)
    if batch_sampler is not None:
        candidates += [getattr(batch_sampler, "sampler", None), batch_sampler]
    candidates.append(getattr(data, "sampler", None))
    for c in candidates:
        if c is not None and hasattr(c, "set_start") and hasattr(c, "global_batch_size"):
            return c
    return None


def _epoch_setter(data: Any) -> Any | None:
    """A plain sampler with ``set_epoch`` (e.g. torch's DistributedSampler), if any."""
    for owner in (getattr(data, "batch_sampler", None), data):
        s = getattr(owner, "sampler", None)
        if s is not None and hasattr(s, "set_epoch"):
            return s
    return None


class DataPass:
    """Starts, restarts and positions the iterator over the run's data.

    ``index`` counts data passes (a pass ends when the data raises ``StopIteration``);
    ``batches`` counts batches handed to the process function in the current pass. With a
    resumable sampler the position is also known in global samples (``cursor``), which
    does not depend on the world size.
    """

    def __init__(self) -> None:
        self.data: Any = None
        self.sampler: Any = None
        self.index = 0
        self.batches = 0
        self.padding_first = float("inf")
        self._pending: tuple[int, int | None] | None = None

    def bind(self, data: Any) -> None:
        self.data = data
        self.sampler = find_resumable_sampler(data) if data is not None else None

    # --- position ------------------------------------------------------------------------
    @property
    def cursor(self) -> int | None:
        """Global samples delivered in this pass (``None`` without a resumable sampler)."""
        if self.sampler is None:
            return None
        return min(self.batches * self.sampler.global_batch_size, self.sampler.pass_length)

    def state_dict(self) -> dict[str, Any]:
        cursor = (
            self._pending[1] if self._pending is not None else self.cursor
        )  # loaded, not run yet
        return {"data_pass": self.index, "cursor": cursor, "pass_batches": self.batches}

    def load(self, data_pass: int, pass_batches: int, cursor: int | None) -> None:
        """Positions the next :meth:`start` at a saved place (applied once)."""
        self.index = data_pass
        self.batches = pass_batches
        self._pending = (pass_batches, cursor)

    def reset(self) -> None:
        self.index, self.batches, self._pending = 0, 0, None

    # --- iterators -----------------------------------------------------------------------
    def start(self, seed: int | None, epoch_length: int | None, new_pass: bool) -> Iterator:
        """Returns an iterator for the current pass (the next one if ``new_pass``)."""
        if self._pending is None and self.batches:
            # a run continued after terminate(): like Ignite, the next epoch gets fresh data
            new_pass = True
        if new_pass:
            self.index += 1
            self.batches = 0
            self._pending = None
        skip_batches, cursor = self._pending if self._pending is not None else (0, None)
        self._pending = None
        self.padding_first = float("inf")
        data = self.data
        if data is None:
            return itertools.repeat(None, epoch_length)  # type: ignore[arg-type]
        s = self.sampler
        if s is not None:
            if seed is not None:
                s.set_seed(seed)
            s.set_epoch(self.index)
            start = cursor if cursor is not None else skip_batches * s.global_batch_size
            s.set_start(start)
            self.batches = start // s.global_batch_size
            if new_pass is False and start >= s.pass_length:
                # saved at the end of a pass: no iterator (nor workers) for the finished pass;
                # the loop sees StopIteration at once and starts the next pass as it would have
                return iter(())
            pad_batches = -(-s.total_padding // s.global_batch_size) if s.total_padding else 0
            self.padding_first = s.num_batches - pad_batches
            return iter(data)
        setter = _epoch_setter(data)
        if setter is not None:
            setter.set_epoch(self.index)
        self.batches = skip_batches
        if not skip_batches:
            return iter(data)
        if isinstance(data, Sequence):
            return (data[i] for i in range(skip_batches, len(data)))
        warnings.warn(
            f"Resuming mid-pass without a ResumableDistributedSampler: fetching and dropping "
            f"{skip_batches} batches to reach the saved position (use auto_dataloader to skip "
            "without fetching)",
            stacklevel=3,
        )
        it = iter(data)
        for _ in range(skip_batches):
            next(it, None)
        return it
