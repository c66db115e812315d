"""Ignite's deterministic helpers: ``keep_random_state``, ``ReproducibleBatchSampler``,
``update_dataloader`` and ``DeterministicEngine``.

Every :class:`~distengine.engine.Engine` is already deterministic where it matters for
resuming: with a loader from ``idist.auto_dataloader`` the order of each data pass is a
function of ``(seed, pass)``, augmentation is seeded per sample, a resume starts at the
saved batch without fetching the ones before it and restores each rank's RNG states.
:class:`DeterministicEngine` extends that to data the engine cannot position itself, such
as a plain ``DataLoader`` with a ``RandomSampler`` (whose order comes from torch's global
RNG when its iterator is created): before each data pass it seeds the global RNGs from
``(seed, pass)``, so the pass reads the same batches in every run with that seed and a
resumed run re-creates the interrupted pass exactly.
"""

from __future__ import annotations

import functools
import random
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader

from distengine.data.sampler import mix_seed
from distengine.engine.engine import Engine
from distengine.engine.events import Events

__all__ = [
    "DeterministicEngine",
    "ReproducibleBatchSampler",
    "keep_random_state",
    "update_dataloader",
]


def _get_rng_states() -> tuple[Any, ...]:
    np = sys.modules.get("numpy")
    return (
        random.getstate(),
        torch.get_rng_state(),
        np.random.get_state() if np is not None else None,
    )


def _set_rng_states(states: tuple[Any, ...]) -> None:
    py, cpu, numpy_state = states
    random.setstate(py)
    torch.set_rng_state(cpu)
    if numpy_state is not None:
        sys.modules["numpy"].random.set_state(numpy_state)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed(seed % (1 << 32))


def keep_random_state(func: Callable) -> Callable:
    """Makes ``func`` run without shifting the global RNGs (``random``, torch CPU, numpy).

    Example:
        >>> @keep_random_state
        ... def draw():
        ...     return torch.rand(1)
        >>> _ = torch.manual_seed(0); _ = draw(); a = torch.rand(1)
        >>> _ = torch.manual_seed(0); b = torch.rand(1)
        >>> torch.equal(a, b)
        True
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        states = _get_rng_states()
        try:
            return func(*args, **kwargs)
        finally:
            _set_rng_states(states)

    return wrapper


def update_dataloader(dataloader: DataLoader, new_batch_sampler: BatchSampler) -> DataLoader:
    """Returns a copy of ``dataloader`` (same dataset, workers, collate …) with ``new_batch_sampler``.

    Example:
        >>> loader = DataLoader(list(range(10)), batch_size=4, shuffle=True)
        >>> loader = update_dataloader(loader, ReproducibleBatchSampler(loader.batch_sampler))
        >>> len(loader)
        3
    """
    if not isinstance(dataloader, DataLoader):
        raise TypeError(f"Expected a torch DataLoader, got {type(dataloader).__name__}")
    skip = {"batch_size", "sampler", "drop_last", "batch_sampler", "dataset_kind"}
    params = {k: v for k, v in vars(dataloader).items() if not k.startswith("_") and k not in skip}
    params["batch_sampler"] = new_batch_sampler
    return type(dataloader)(**params)


class ReproducibleBatchSampler(BatchSampler):
    """Wraps a batch sampler so that a pass can start at any batch without loading the
    batches before it: the pass's batches of indices are drawn when its iterator starts,
    then served from ``start_iteration`` on (applied once).

    Args:
        batch_sampler: the batch sampler to wrap (``loader.batch_sampler``).
        start_iteration: the batch the next pass starts at.

    Example:
        >>> bs = ReproducibleBatchSampler(BatchSampler(range(10), 4, False), start_iteration=1)
        >>> list(bs)
        [[4, 5, 6, 7], [8, 9]]
    """

    def __init__(self, batch_sampler: BatchSampler, start_iteration: int | None = None):
        if not isinstance(batch_sampler, BatchSampler):
            raise TypeError(
                "Argument batch_sampler should be torch.utils.data.sampler.BatchSampler, got "
                f"{type(batch_sampler).__name__}"
            )
        self.batch_sampler = batch_sampler
        self.sampler = batch_sampler.sampler
        self.start_iteration = start_iteration
        self.batch_indices: list[list[int]] = []

    def setup_batch_indices(self) -> None:
        """Draws this pass's batches (then drops those before ``start_iteration``)."""
        self.batch_indices = list(self.batch_sampler)
        if self.start_iteration is not None:
            self.batch_indices = self.batch_indices[self.start_iteration :]
            self.start_iteration = None

    def __iter__(self) -> Iterator[list[int]]:
        # a generator, like BatchSampler's: the wrapped sampler draws its order on the first
        # next(), after the DataLoader drew its worker seeds (the same order of RNG draws)
        self.setup_batch_indices()
        yield from self.batch_indices

    def __len__(self) -> int:
        return len(self.batch_sampler)


class DeterministicEngine(Engine):
    """An :class:`~distengine.engine.Engine` that also makes data it cannot position itself
    reproducible (see the module docstring), as Ignite's ``DeterministicEngine`` does.

    Before each data pass the global RNGs (``random``, torch, numpy) are seeded from
    ``(state.seed, pass)``; a plain ``DataLoader`` is given a
    :class:`ReproducibleBatchSampler` so that a resume mid-pass starts at the saved batch
    without fetching the ones before it; when resuming mid-pass the RNG states the engine
    restored are kept (so the model's random stream continues where it stopped; data
    without a length is fast-forwarded from the pass seed and keeps that stream, as in
    Ignite). At
    ``STARTED``, when CUDA is available, it asks torch for deterministic algorithms
    (``warn_only``) and turns off cuDNN's benchmark mode.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> loader = DataLoader(list(range(8)), batch_size=2, shuffle=True)
        >>> def order():
        ...     e = DeterministicEngine(lambda e, b: b.tolist())
        ...     seen = []
        ...     _ = e.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.output))
        ...     e.run(loader, max_epochs=2, seed=5)
        ...     return seen
        >>> order() == order()
        True
    """

    def __init__(self, process_function: Callable[[Engine, Any], Any], **kwargs: Any):
        super().__init__(process_function, **kwargs)
        self.add_event_handler(Events.STARTED, _deterministic_algorithms)

    def _pass_hook(
        self, data: Any, data_pass: int, skip_batches: int
    ) -> tuple[Callable[[], None] | None, bool]:
        restore = None
        sized = hasattr(data, "__len__")
        if skip_batches and sized and self._rng_restored:
            # resuming mid-pass from saved RNG states: the pass is re-created from its seed,
            # then the model's random stream continues where it was saved
            states = _get_rng_states()

            def restore() -> None:
                _set_rng_states(states)

        _seed_all(mix_seed(self.state.seed or 0, data_pass) % (1 << 63))
        batch_sampler = getattr(data, "batch_sampler", None)
        if isinstance(batch_sampler, ReproducibleBatchSampler):
            batch_sampler.start_iteration = skip_batches or None
            return restore, True
        return restore, False

    def run(self, data: Any = None, *args: Any, **kwargs: Any) -> Any:
        if data is None and self.state.dataloader is None:
            raise ValueError(
                "Deterministic engine does not support the option of data=None: give the data "
                "to make reproducible"
            )
        if isinstance(data, DataLoader) and _patchable(data):
            data = update_dataloader(data, ReproducibleBatchSampler(data.batch_sampler))
        return super().run(data, *args, **kwargs)


def _patchable(loader: DataLoader) -> bool:
    bs = loader.batch_sampler
    if bs is None or isinstance(bs, ReproducibleBatchSampler):
        return False
    if hasattr(getattr(loader, "sampler", None), "set_start"):  # the engine positions it
        return False
    return isinstance(bs, BatchSampler) and not isinstance(
        getattr(loader, "dataset", None), torch.utils.data.IterableDataset
    )


def _deterministic_algorithms() -> None:
    # as Ignite: only where GPU kernels could differ run to run (a global switch of torch)
    if torch.cuda.is_available():
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
