"""Per-sample seeding of random augmentation, independent of workers and of the trainer's RNG."""

from __future__ import annotations

import ctypes
import random
import struct
import sys
from typing import Any

import torch

from distengine.data.sampler import mix_seed

__all__ = ["SeededDataset"]


class SeededDataset(torch.utils.data.Dataset):
    """Wraps a map-style dataset so each sample's randomness depends only on
    ``(seed, data_pass, index)``.

    :class:`ResumableDistributedSampler` built with ``keyed=True`` (as ``auto_dataloader``
    builds it) yields ``(seed, data_pass, index)`` keys. For each key this wrapper seeds
    torch, ``random`` and numpy (if imported) from the key, reads ``dataset[index]`` and —
    when it runs in the main process rather than in a DataLoader worker — restores the
    previous generator states, so data loading never shifts the trainer's RNG. A plain
    integer key reads the sample with ``(seed, 0, index)``.

    Args:
        dataset: a map-style dataset (``__getitem__`` and ``__len__``).
        seed: the seed used for plain integer keys.

    Example:
        >>> ds = SeededDataset(my_dataset)  # doctest: +SKIP
        >>> ds[(7, 0, 3)]  # sample 3 of pass 0 of a run seeded with 7  # doctest: +SKIP
    """

    def __init__(self, dataset: Any, seed: int = 0):
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(
                f"SeededDataset needs a map-style dataset with __getitem__ and __len__, "
                f"got {type(dataset).__name__}"
            )
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[Any]) -> list[Any]:
        """A batch of samples (what DataLoader's fetcher calls): each sample is seeded from
        its own key; the main process saves and restores the global generators once per
        batch, not once per sample."""
        if torch.utils.data.get_worker_info() is not None:
            return [self._seeded_read(key) for key in keys]
        saved = _save_all()
        try:
            return [self._seeded_read(key) for key in keys]
        finally:
            _restore_all(saved)

    def _seeded_read(self, key: Any) -> Any:
        if isinstance(key, tuple):
            seed, data_pass, index = key
        else:
            seed, data_pass, index = self.seed, 0, key
        _seed_all(mix_seed(seed, data_pass, index))
        return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        # Forward attributes (e.g. ``classes``) to the wrapped dataset; guard against
        # recursion while unpickling, before ``dataset`` exists.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self) -> str:
        return f"SeededDataset({self.dataset!r})"


def _seed_all(seed: int) -> None:
    # Only the CPU generator: torch.manual_seed would also reseed CUDA (the trainer's dropout).
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed(seed % (1 << 32))


class _NumpyState:
    """Saves/restores numpy's global RandomState exactly and cheaply.

    Its state is the MT19937 struct of the bit generator *and* the cached Gaussian of the
    legacy ``RandomState`` (``has_gauss``, ``gauss``: ``np.random.normal`` draws values in
    pairs and keeps the second). Both are copied with ``memmove`` (~1 us) instead of
    ``get_state``/``set_state`` (~70 us each). The Gaussian cache has no public address, so
    its offset in the ``RandomState`` object is found once by writing two marker values
    through ``set_state`` into a scratch instance and locating them; if anything about that
    layout is not as expected the slow public calls are used instead.
    """

    _MT_SIZE = 624 * 4 + 4  # mt19937_state: uint32 key[624]; int pos
    _AUG_SIZE = 16  # int has_gauss (padded to 8 bytes); double gauss

    def __init__(self, np: Any):
        self.np = np
        self.rand = np.random.mtrand._rand
        self.mt_addr = self.aug_addr = None
        try:
            bitgen = self.rand._bit_generator
            if type(bitgen).__name__ == "MT19937":
                offset = _gauss_offset(np)
                if offset is not None:
                    self.mt_addr = bitgen.ctypes.state_address
                    self.aug_addr = id(self.rand) + offset
        except (AttributeError, TypeError, ValueError):
            self.mt_addr = self.aug_addr = None

    def save(self) -> Any:
        if self.mt_addr is None:
            return self.np.random.get_state()
        buf = ctypes.create_string_buffer(self._MT_SIZE + self._AUG_SIZE)
        ctypes.memmove(buf, self.mt_addr, self._MT_SIZE)
        ctypes.memmove(ctypes.addressof(buf) + self._MT_SIZE, self.aug_addr, self._AUG_SIZE)
        return buf

    def restore(self, saved: Any) -> None:
        if self.mt_addr is None:
            self.np.random.set_state(saved)
            return
        ctypes.memmove(self.mt_addr, saved, self._MT_SIZE)
        ctypes.memmove(self.aug_addr, ctypes.addressof(saved) + self._MT_SIZE, self._AUG_SIZE)


def _gauss_offset(np: Any) -> int | None:
    """Offset of ``has_gauss`` in a legacy ``RandomState`` object (``gauss`` follows 8 bytes
    later), found with marker values; ``None`` if the layout is not the expected one."""
    rs = np.random.RandomState(0)
    kind, keys, pos, _, _ = rs.get_state()
    size = type(rs).__basicsize__
    found = None
    for has_gauss, marker in ((1, 1.2345678901234567e-300), (0, -9.876543210987654e-299)):
        rs.set_state((kind, keys, pos, has_gauss, marker))
        raw = ctypes.string_at(id(rs), size)
        at = raw.find(struct.pack("d", marker))
        if at < 8 or (found is not None and at - 8 != found):
            return None
        if struct.unpack("i", raw[at - 8 : at - 4])[0] != has_gauss:
            return None
        found = at - 8
    return found


_numpy_state: _NumpyState | None = None


def _np_state() -> _NumpyState | None:
    global _numpy_state
    np = sys.modules.get("numpy")
    if np is None:
        return None
    if _numpy_state is None or _numpy_state.np is not np:
        _numpy_state = _NumpyState(np)
    return _numpy_state


def _save_all() -> tuple[Any, Any, Any]:
    nps = _np_state()
    return torch.get_rng_state(), random.getstate(), nps.save() if nps is not None else None


def _restore_all(saved: tuple[Any, Any, Any]) -> None:
    torch_state, py_state, np_state = saved
    torch.set_rng_state(torch_state)
    random.setstate(py_state)
    if np_state is not None:
        _np_state().restore(np_state)
