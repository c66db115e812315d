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
    builds it) yields ``(seed, data_pass, index)`` keys. Before ``dataset[index]`` is read,
    each global generator that reading draws from (torch's CPU generator, ``random``, and
    numpy's legacy one when numpy is imported) is seeded from the key; in the main process
    (not in a DataLoader worker) the generators are then given back their previous states,
    so loading data never shifts the trainer's RNG. A plain integer key reads the sample
    with ``(seed, 0, index)``.

    Seeding costs microseconds per generator and sample, so by default (``lazy=True``) a
    generator is seeded only if reading draws from it. The first batch a process reads is
    seeded in full, and after each of its samples every generator's state is compared with
    the state seeding gave it: those that moved were drawn from and are seeded before every
    sample from then on (:attr:`drawn`). The others are left as they are, and their complete
    states (the cached Gaussians of numpy and ``random`` included) are compared once per
    batch: should a later batch draw from one of them after all (a draw made only for some
    samples), that batch is read again with it seeded, and it joins :attr:`drawn`. So every
    sample's randomness is the same function of its key as with every generator seeded, and
    a dataset without random augmentation pays for no seeding. The one draw these
    comparisons cannot see is one whose generator state ``__getitem__`` itself puts back (a
    ``torch.random.fork_rng()`` block drawing without seeding inside): wrap such a dataset
    with ``lazy=False``, which seeds every generator before every sample, as does a dataset
    whose reads must never be repeated while it draws only for some samples.

    Args:
        dataset: a map-style dataset (``__getitem__`` and ``__len__``).
        seed: the seed used for plain integer keys.
        lazy: seed a generator only if reading draws from it (see above); ``False``: seed
            every generator before every sample.

    Example:
        >>> class Noisy(torch.utils.data.Dataset):  # a random augmentation
        ...     def __len__(self):
        ...         return 8
        ...     def __getitem__(self, index):
        ...         return index + torch.rand(1).item()
        >>> ds = SeededDataset(Noisy())
        >>> a = ds[(7, 0, 3)]  # sample 3 of pass 0 of a run seeded with 7
        >>> _ = torch.rand(5)  # whatever else draws in between
        >>> ds[(7, 0, 3)] == a, ds[(7, 1, 3)] == a  # same key, same sample; next pass differs
        (True, False)
    """

    def __init__(self, dataset: Any, seed: int = 0, lazy: bool = True):
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(
                f"SeededDataset needs a map-style dataset with __getitem__ and __len__, "
                f"got {type(dataset).__name__}"
            )
        if not isinstance(lazy, bool):
            raise TypeError(f"lazy must be a bool, got {type(lazy).__name__}")
        self.dataset = dataset
        self.seed = int(seed)
        self.lazy = lazy
        #: names of the generators (``"torch"``, ``"random"``, ``"numpy"``) seen drawn from
        #: while reading in this process: seeded before every sample
        self.drawn: set[str] = set()
        self.probed = False  # whether this process read its first (fully seeded) batch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[Any]) -> list[Any]:
        """A batch of samples (what DataLoader's fetcher calls), each seeded from its own key;
        past the first batch, generator states are compared once per batch, not per sample."""
        in_worker = torch.utils.data.get_worker_info() is not None
        gens = _GENERATORS
        probe = self.lazy and not self.probed
        seeded = [g for g in gens if not self.lazy or probe or g.name in self.drawn]
        watched = [g for g in gens if g not in seeded]
        # the main process gives its generators back; a worker's do not matter
        saved = {g: g.save() for g in (watched if in_worker else gens)}
        try:
            while True:
                samples = self._read(keys, seeded, probe)
                new = [g for g in watched if not g.same(saved[g])]
                if not new:
                    return samples
                # Reading drew from a generator left as it was: these samples depend on its
                # state. Read the batch again with that generator seeded per sample.
                self.drawn.update(g.name for g in new)
                seeded += new
                watched = [g for g in watched if g not in new]
        finally:
            if not in_worker:
                for g in seeded:
                    g.restore(saved[g])

    def _read(self, keys: list[Any], seeded: list[_Generator], probe: bool) -> list[Any]:
        read = self.dataset.__getitem__
        if not seeded:
            return [read(k[2] if isinstance(k, tuple) else k) for k in keys]
        seeders = [g.seed for g in seeded]
        out = []
        for key in keys:
            if isinstance(key, tuple):
                seed, data_pass, index = key
            else:
                seed, data_pass, index = self.seed, 0, key
            s = mix_seed(seed, data_pass, index)
            for seed_fn in seeders:
                seed_fn(s)
            if probe:  # which generators does reading move away from their seeded state?
                seeded_states = [(g, g.save()) for g in seeded if g.name not in self.drawn]
                out.append(read(index))
                self.drawn.update(g.name for g, st in seeded_states if not g.same(st))
            else:
                out.append(read(index))
        if probe:
            self.probed = True
        return out

    def __getattr__(self, name: str) -> Any:
        # Forward attributes (e.g. ``classes``) to the wrapped dataset; guard against
        # recursion while unpickling, before ``dataset`` exists.
        if name in ("dataset", "drawn", "lazy", "probed"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self) -> str:
        return f"SeededDataset({self.dataset!r})"


class _Generator:
    """One global generator: seeded from a 63-bit seed; its complete state saved, compared
    and restored."""

    name = ""

    def seed(self, seed: int) -> None:
        raise NotImplementedError

    def save(self) -> Any:
        raise NotImplementedError

    def same(self, saved: Any) -> bool:
        raise NotImplementedError

    def restore(self, saved: Any) -> None:
        raise NotImplementedError


class _Torch(_Generator):
    """torch's default CPU generator (``torch.manual_seed`` would also reseed CUDA, whose
    generator the trainer's dropout uses)."""

    name = "torch"

    def seed(self, seed: int) -> None:
        torch.default_generator.manual_seed(seed)

    def save(self) -> Any:
        return torch.default_generator.get_state()

    def same(self, saved: Any) -> bool:
        return torch.equal(torch.default_generator.get_state(), saved)

    def restore(self, saved: Any) -> None:
        torch.default_generator.set_state(saved)


class _Random(_Generator):
    """Python's ``random``: the MT19937 words and position of its C object, and the cached
    Gaussian of ``random.gauss`` (``gauss_next``).

    ``getstate`` builds a tuple of 625 ints (~10 us); the C object's ``int index; uint32
    state[624]`` are copied with ``ctypes`` instead (~0.3 us). Their offset is checked once
    by writing marker words through ``setstate`` into a scratch instance; if the layout is
    not the expected one the public calls are used.
    """

    name = "random"
    _SIZE = 4 + 624 * 4  # int index; uint32_t state[624]

    def __init__(self) -> None:
        self.inst = random._inst  # type: ignore[attr-defined]  # what random.random() etc. use
        self.addr = None
        offset = _random_offset()
        if offset is not None and type(self.inst).__basicsize__ >= offset + self._SIZE:
            self.addr = id(self.inst) + offset

    def seed(self, seed: int) -> None:
        random.seed(seed)

    def save(self) -> Any:
        if self.addr is None or random._inst is not self.inst:  # type: ignore[attr-defined]
            return random.getstate()
        return ctypes.string_at(self.addr, self._SIZE), self.inst.gauss_next

    def same(self, saved: Any) -> bool:
        if isinstance(saved, tuple) and len(saved) == 2:
            words, gauss = saved
            return ctypes.string_at(self.addr, self._SIZE) == words and (
                self.inst.gauss_next == gauss
            )
        return random.getstate() == saved

    def restore(self, saved: Any) -> None:
        if isinstance(saved, tuple) and len(saved) == 2:
            words, gauss = saved
            ctypes.memmove(self.addr, words, self._SIZE)
            self.inst.gauss_next = gauss
            return
        random.setstate(saved)


def _random_offset() -> int | None:
    """Offset of ``index`` in a ``random.Random`` object (``state[624]`` follows), found
    with marker words; ``None`` if the layout is not the expected one."""
    r = random.Random()
    words = tuple((0x9E3779B9 * (i + 1)) & 0xFFFFFFFF for i in range(624))
    r.setstate((3, (*words, 397), None))
    raw = ctypes.string_at(id(r), type(r).__basicsize__)
    at = raw.find(struct.pack("624I", *words))
    if at < 4 or struct.unpack("i", raw[at - 4 : at])[0] != 397:
        return None
    return at - 4


class _Numpy(_Generator):
    """numpy's legacy global ``RandomState``, if numpy is imported (a first import while
    reading counts as a change: its state came from the OS)."""

    name = "numpy"

    def seed(self, seed: int) -> None:
        np = sys.modules.get("numpy")
        if np is not None:
            np.random.seed(seed % (1 << 32))

    def save(self) -> Any:
        nps = _np_state()
        return (nps, nps.save() if nps is not None else None)

    def same(self, saved: Any) -> bool:
        nps, state = saved
        now = _np_state()
        if nps is None or now is not nps:
            return now is nps
        return nps.same(state)

    def restore(self, saved: Any) -> None:
        nps, state = saved
        if nps is not None and nps is _np_state():
            nps.restore(state)


_GENERATORS: tuple[_Generator, ...] = (_Torch(), _Random(), _Numpy())


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

    def same(self, saved: Any) -> bool:
        """Whether the state (Gaussian cache included) is the one ``saved`` holds."""
        if self.mt_addr is None:
            now = self.np.random.get_state()
            return (
                now[0] == saved[0]
                and bool((now[1] == saved[1]).all())
                and tuple(now[2:]) == tuple(saved[2:])
            )
        return (
            ctypes.string_at(self.mt_addr, self._MT_SIZE)
            + ctypes.string_at(self.aug_addr, self._AUG_SIZE)
            == saved.raw
        )

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


# Process-wide on purpose: the layout of numpy's global RandomState, measured once per
# numpy module (there is one per process); it belongs to no dataset.
_numpy_state: _NumpyState | None = None


def _np_state() -> _NumpyState | None:
    global _numpy_state
    np = sys.modules.get("numpy")
    if np is None:
        return None
    if _numpy_state is None or _numpy_state.np is not np:
        _numpy_state = _NumpyState(np)
    return _numpy_state
