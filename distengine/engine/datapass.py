"""The engine's view of its data: which pass it is in, how far, and how to restart mid-pass."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from distengine.data.resumable import ResumableSampler, check_resumable_sampler

PassHook = Callable[[Any, int, int], tuple[Callable[[], None] | None, bool]]

__all__ = ["DataPass", "data_length", "find_resumable_sampler"]


def find_resumable_sampler(data: Any) -> ResumableSampler | None:
    """The sampler of ``data`` that can start mid-pass, if it has one.

    A candidate (``batch_sampler.sampler``, ``batch_sampler``, ``sampler``) claims the role
    with an int ``global_batch_size`` and a callable ``set_start``; it must then have every
    member of :class:`~distengine.data.ResumableSampler`.

    Raises:
        TypeError: the claiming sampler lacks a member of the protocol (named).
    """
    candidates = []
    batch_sampler = getattr(data, "batch_sampler", None)
    if batch_sampler is not None:
        candidates += [getattr(batch_sampler, "sampler", None), batch_sampler]
    candidates.append(getattr(data, "sampler", None))
    for c in candidates:
        gbs = getattr(c, "global_batch_size", None)
        if isinstance(gbs, int) and callable(getattr(c, "set_start", None)):
            return check_resumable_sampler(c)
    return None


def data_length(data: Any) -> int | None:
    """``len(data)``, or ``None`` for data without a length."""
    try:
        return len(data) if hasattr(data, "__len__") else None
    except TypeError:  # e.g. a DataLoader over an IterableDataset
        return None


def _after_first(it: Iterator, after: Callable[[], None]) -> Iterator:
    """``it``, calling ``after()`` once its first item has been fetched (or it ended)."""
    try:
        first = next(it)
    except StopIteration:
        after()
        return
    after()
    yield first
    yield from it


def _epoch_setter(data: Any) -> Any | None:
    """A plain sampler with ``set_epoch`` (e.g. torch's DistributedSampler), if any."""
    for owner in (getattr(data, "batch_sampler", None), data):
        s = getattr(owner, "sampler", None)
        if s is not None and hasattr(s, "set_epoch"):
            return s
    return None


class DataPass:
    """Starts, restarts and positions the iterator over the run's data.

    ``number`` is the pass number (0 for the first; a pass ends when the data raises
    ``StopIteration``); ``batches`` counts the batches of the current pass whose iteration
    completed. With a resumable sampler the position is also known in global samples (``cursor``), which
    does not depend on the world size. Part of :class:`~distengine.engine.progress.RunPosition`.
    """

    def __init__(self) -> None:
        self.data: Any = None
        self.sampler: ResumableSampler | None = None
        self.length: int | None = None
        self.number = 0
        self.batches = 0
        #: first batch index of the pass whose geometry (padding, loss weight) is not the
        #: default; the engine asks the sampler only from there on
        self.irregular_from = float("inf")
        self._pending: tuple[int, int | None] | None = None
        self._saved_shape: tuple[int | None, int | None] = (None, None)
        self._abandoned = False
        self._from_iteration: int | None = None  # Ignite's form: place it once data is known

    def bind(self, data: Any) -> None:
        self.data = data
        self.sampler = find_resumable_sampler(data) if data is not None else None
        self.length = data_length(data) if data is not None else None

    @property
    def global_batch_size(self) -> int | None:
        return self.sampler.global_batch_size if self.sampler is not None else None

    # --- position ------------------------------------------------------------------------
    @property
    def cursor(self) -> int | None:
        """Global samples delivered in this pass (``None`` without a resumable sampler)."""
        if self._pending is not None:  # loaded, not run yet
            return self._pending[1]
        if self.sampler is None:
            return None
        return min(self.batches * self.sampler.global_batch_size, self.sampler.pass_length)

    def state_dict(self) -> dict[str, Any]:
        number, batches = self.number, self.batches
        if self._abandoned:  # the next epoch starts the next pass
            number, batches = number + 1, 0
        cursor = self.cursor if not self._abandoned else (0 if self.sampler is not None else None)
        length, gbs = self.length, self.global_batch_size
        if self.data is None and self._pending is not None:
            length, gbs = self._saved_shape
        return {
            "data_pass": number,
            "cursor": cursor,
            "pass_batches": batches,
            "data_length": length,
            "global_batch_size": gbs,
        }

    def load(
        self,
        data_pass: int,
        pass_batches: int,
        cursor: int | None,
        length: int | None = None,
        global_batch_size: int | None = None,
        from_iteration: int | None = None,
    ) -> None:
        """Positions the next :meth:`start` at a saved place (applied once).

        ``from_iteration``: the state had only Ignite's counters; the pass and the batch in
        it are then derived, as Ignite does, from the iteration and the length of the data
        given to ``run`` (``divmod(iteration, len(data))``; data without a length is taken
        as one endless pass).
        """
        self.number = data_pass
        self.batches = pass_batches
        self._pending = (pass_batches, cursor)
        self._saved_shape = (length, global_batch_size)
        self._abandoned = False
        self._from_iteration = from_iteration

    def check_shape(self, explicit_epoch_length: bool) -> None:
        """Refuses a loaded position over data of another length or global batch.

        Raises:
            ValueError: naming both, unless ``explicit_epoch_length`` (the user chose the
                epoch length for the new data: the position then maps to a batch boundary).
        """
        saved_length, saved_gbs = self._saved_shape
        if self._pending is None or explicit_epoch_length:
            return
        if saved_length is not None and self.length is not None and saved_length != self.length:
            raise ValueError(
                f"The saved run's data had {saved_length} batches per pass, the data given to "
                f"run() has {self.length}: resuming would shift every epoch against the data. "
                "Pass the same data, or pass the saved epoch_length= to run() to resume over other "
                "data on purpose"
            )
        gbs = self.global_batch_size
        if saved_gbs is not None and gbs is not None and saved_gbs != gbs:
            raise ValueError(
                f"The saved run used a global batch of {saved_gbs} samples, the data given to "
                f"run() has {gbs}: the saved cursor would land on other batches. Use the same "
                "global batch size, or pass the saved epoch_length= to run() to resume over other "
                "data on purpose"
            )

    def reset(self) -> None:
        self.number, self.batches, self._pending, self._abandoned = 0, 0, None, False
        self._saved_shape = (None, None)
        self._from_iteration = None

    def abandon_pass(self) -> None:
        """The rest of the current pass is skipped: the next :meth:`start` begins a new pass."""
        self._abandoned = True
        self._pending = None

    # --- iterators -----------------------------------------------------------------------
    def start(
        self,
        seed: int | None,
        epoch_length: int | None,
        new_pass: bool,
        pass_hook: PassHook | None = None,
    ) -> Iterator:
        """Returns an iterator for the current pass (the next one if ``new_pass``).

        ``pass_hook(data, data_pass, skip_batches)``, if given, runs just before the
        iterator is created; it returns ``(after, skipped)``: ``after()`` (or ``None``) runs
        once the first batch of the iterator has been fetched (samplers draw their order
        lazily, at the first fetch), and ``skipped`` says that the hook already made the data
        start at ``skip_batches`` (so nothing is fetched to get there).
        """
        if self._abandoned:
            new_pass, self._abandoned = True, False
        if self._from_iteration is not None:
            if not new_pass:
                if self.length:
                    self.number, in_pass = divmod(self._from_iteration, self.length)
                else:  # as Ignite: one pass from the start (an endless iterator)
                    self.number, in_pass = 0, self._from_iteration
                self._pending = (in_pass, None)
            self._from_iteration = None
        if new_pass:
            self.number += 1
            self.batches = 0
            self._pending = None
        skip_batches, cursor = self._pending if self._pending is not None else (self.batches, None)
        self._pending = None
        self.irregular_from = float("inf")
        data = self.data
        if data is None:
            return itertools.repeat(None, epoch_length)  # type: ignore[arg-type]
        after, skipped = (None, False)
        if pass_hook is not None:
            after, skipped = pass_hook(data, self.number, skip_batches)
        it = self._position(data, seed, skip_batches, cursor, new_pass, skipped)
        return it if after is None else _after_first(it, after)

    def _position(
        self,
        data: Any,
        seed: int | None,
        skip_batches: int,
        cursor: int | None,
        new_pass: bool,
        skipped: bool,
    ) -> Iterator:
        s = self.sampler
        if s is not None:
            if seed is not None:
                s.set_seed(seed)
            s.set_epoch(self.number)
            gbs = s.global_batch_size
            start = cursor if cursor is not None else skip_batches * gbs
            if start % gbs:  # only after a resume over other data, allowed with epoch_length=
                warnings.warn(
                    f"The saved cursor {start} is not a multiple of the global batch size {gbs}: "
                    f"resuming at {start - start % gbs} (samples between are read again)",
                    stacklevel=3,
                )
                start -= start % gbs
            s.set_start(min(start, s.pass_length))
            self.batches = min(start, s.pass_length) // gbs
            if not new_pass and start >= s.pass_length:
                # saved at the end of a pass: no iterator (nor workers) for the finished pass;
                # the loop sees StopIteration at once and starts the next pass as it would have
                return iter(())
            self.irregular_from = s.first_irregular_batch
            return iter(data)
        setter = _epoch_setter(data)
        if setter is not None:
            setter.set_epoch(self.number)
        self.batches = skip_batches
        if not skip_batches or skipped:
            return iter(data)
        if isinstance(data, Sequence):
            return (data[i] for i in range(skip_batches, len(data)))
        if not new_pass and self.length and skip_batches >= self.length:
            # saved at the end of a pass (a checkpoint on EPOCH_COMPLETED): no iterator for
            # the finished pass, so nothing is fetched and the data draws nothing from the
            # global RNG; the loop sees StopIteration at once and starts the next pass from
            # the same RNG state as the uninterrupted run did
            return iter(())
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
