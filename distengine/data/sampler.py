"""A sampler whose order is a pure function of (seed, data pass) and that can start mid-pass.

Layout of one pass (``N`` samples, global batch ``B``, ``W`` ranks):

- the *stream* is a permutation of ``range(N)`` (identity when ``shuffle=False``) drawn
  from ``(seed, pass)``; global batch ``k`` is ``stream[k*B:(k+1)*B]`` (the last one may be
  shorter; with ``drop_last`` it is cut);
- rank ``r`` takes a fixed slice of every global batch: ``b_r = B // W`` samples, one more
  for the first ``B % W`` ranks, at offset ``o_r`` (the sizes of the ranks before it). When
  ``W`` divides ``B`` every rank takes ``B / W``;
- in the last, shorter global batch a rank takes what is left of its slice; a rank left
  with nothing gets ONE padding row (a copy of the batch's first sample), so that every
  rank runs the same number of iterations. Padding is only ever a whole batch of one row.

So the global batches do not depend on the world size (a pass can resume at another world
size on the same batches), a pass restarts at any global batch without touching the
samples before it, and nothing is padded at world size 1. Each rank's share of a global
batch is known without communication (:meth:`batch_geometry`): its real rows, whether its
batch is padding, and the factor by which its mean loss must be weighted so that DDP's
average of the ranks' gradients equals the gradient of the mean over the global batch.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sized
from typing import Any

import torch

from distengine import distributed as idist

__all__ = ["ResumableDistributedSampler", "mix_seed"]

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """Mixes integers into one 63-bit seed (deterministic across processes and platforms)."""
    h = 0x243F6A8885A308D3
    for p in parts:
        h = ((h ^ (int(p) & _MASK64)) * 0x9E3779B97F4A7C15) & _MASK64
        h ^= h >> 29
    return h & ((1 << 63) - 1)


class ResumableDistributedSampler(torch.utils.data.Sampler):
    """Shards one global permutation per data pass across ranks, resumable mid-pass.

    The engine drives it: ``set_seed(state.seed)``, ``set_epoch(data_pass)`` and
    ``set_start(cursor)`` before each pass, where the cursor counts global samples
    (positions of the global batches) already delivered in the pass.

    Args:
        data_source: the dataset (or anything with ``len``), or the number of samples.
        global_batch_size: samples per global batch (all ranks together); any positive
            int — when the world size does not divide it, ranks take sizes that differ
            by one (see the module docstring).
        num_replicas: world size (default: the current one).
        rank: this rank (default: the current one).
        shuffle: draw a permutation per pass; ``False`` keeps the dataset order.
        seed: seed used until the engine sets the run's seed.
        drop_last: cut the last partial global batch instead of delivering it.
        keyed: yield ``(seed, data_pass, index)`` keys for :class:`SeededDataset`
            instead of plain indices.

    Example:
        >>> s = ResumableDistributedSampler(10, global_batch_size=4, num_replicas=2, rank=1)
        >>> s.set_epoch(0); s.set_start(4); len(list(s))
        3
        >>> s.batch_geometry(2)  # the last global batch holds 2 samples, both on rank 0
        (0, 1, 0.0)
    """

    def __init__(
        self,
        data_source: Sized | int,
        global_batch_size: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        keyed: bool = False,
    ):
        if num_replicas is None or rank is None:
            num_replicas = idist.get_world_size() if num_replicas is None else num_replicas
            rank = idist.get_rank() if rank is None else rank
        n = data_source if isinstance(data_source, int) else len(data_source)
        if n < 1:
            raise ValueError(f"Expected a non-empty data source, got {n} samples")
        if (
            isinstance(global_batch_size, bool)
            or not isinstance(global_batch_size, int)
            or global_batch_size < 1
        ):
            raise ValueError(f"global_batch_size must be a positive int, got {global_batch_size!r}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"Expected 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}"
            )
        if drop_last and n < global_batch_size:
            raise ValueError(
                f"drop_last=True with {n} samples and a global batch of {global_batch_size} leaves no batch"
            )
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.num_samples_total = n
        self.global_batch_size = global_batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        base, extra = divmod(global_batch_size, num_replicas)
        #: this rank's share of a full global batch (0 when the global batch is smaller
        #: than the world: such a rank only ever gets padding)
        self.rank_batch_size = base + (1 if rank < extra else 0)
        self.rank_offset = rank * base + min(rank, extra)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.keyed = keyed
        self.epoch = 0
        self.start = 0
        self._cache: tuple[tuple[int, int], torch.Tensor, torch.Tensor] | None = None

    # --- the engine drives these -------------------------------------------------
    def set_seed(self, seed: int) -> None:
        self.seed = int(seed)

    def set_epoch(self, epoch: int) -> None:
        """Selects the data pass (its permutation)."""
        self.epoch = int(epoch)

    def set_start(self, global_samples: int) -> None:
        """Starts the next iteration at a global sample offset of the pass (a batch boundary)."""
        if (
            isinstance(global_samples, bool)
            or not isinstance(global_samples, int)
            or global_samples < 0
            or global_samples % self.global_batch_size
        ):
            raise ValueError(
                f"The start must be a non-negative multiple of the global batch size "
                f"{self.global_batch_size}, got {global_samples!r}"
            )
        self.start = min(int(global_samples), self.pass_length)

    # --- geometry ----------------------------------------------------------------
    @property
    def num_batches(self) -> int:
        """Global batches (= batches on every rank) in one pass."""
        n, b = self.num_samples_total, self.global_batch_size
        return n // b if self.drop_last else -(-n // b)

    @property
    def pass_length(self) -> int:
        """Positions of one full pass in global samples (``num_batches * global_batch_size``)."""
        return self.num_batches * self.global_batch_size

    @property
    def loader_batch_size(self) -> int:
        """The batch size of this rank's DataLoader (at least 1: a padding row)."""
        return max(1, self.rank_batch_size)

    def global_rows(self, k: int) -> int:
        """Samples in global batch ``k`` (all ranks together)."""
        return min(self.global_batch_size, self.num_samples_total - k * self.global_batch_size)

    def real_rows(self, k: int) -> int:
        """This rank's samples in global batch ``k`` (0 when its batch is padding)."""
        left = self.num_samples_total - k * self.global_batch_size - self.rank_offset
        return max(0, min(self.rank_batch_size, left))

    def padding_in_batch(self, k: int) -> int:
        """Padded rows at the end of this rank's ``k``-th batch of the pass (0 or 1)."""
        return 0 if self.real_rows(k) else 1

    def batch_geometry(self, k: int) -> tuple[int, int, float]:
        """``(real rows, padded rows, loss weight)`` of this rank's ``k``-th batch.

        The loss weight is ``real_rows * world_size / global_rows``: multiplying this
        rank's mean loss by it makes DDP's average over ranks the mean over the global
        batch's samples (1.0 when every rank holds an equal share).
        """
        real = self.real_rows(k)
        return real, 0 if real else 1, real * self.num_replicas / self.global_rows(k)

    @property
    def first_irregular_batch(self) -> int:
        """The first batch index whose geometry is not ``(B / W rows, no padding, weight 1)``."""
        if self.global_batch_size % self.num_replicas:
            return 0
        if self.num_samples_total % self.global_batch_size and not self.drop_last:
            return self.num_batches - 1
        return self.num_batches

    def stream(self) -> torch.Tensor:
        """The pass's global order of sample indices (cached per seed and pass)."""
        return self._layout()[0]

    def _layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(stream, this rank's sample indices for the whole pass, padding included)``."""
        key = (self.seed, self.epoch)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1], self._cache[2]
        n = self.num_samples_total
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(mix_seed(self.seed, self.epoch))
            perm = torch.randperm(n, generator=g)
        else:
            perm = torch.arange(n)
        nb, gbs, rb = self.num_batches, self.global_batch_size, self.rank_batch_size
        starts = torch.arange(nb) * gbs
        if rb == 0:
            positions = starts  # one padding row per batch
        else:
            grid = starts[:, None] + self.rank_offset + torch.arange(rb)[None, :]
            last = self.real_rows(nb - 1)
            tail = grid[-1, :last] if last else starts[-1:]
            positions = torch.cat([grid[:-1].reshape(-1), tail])
        mine = perm[positions]
        self._cache = (key, perm, mine)
        return perm, mine

    def global_batch_digest(self, k: int) -> int:
        """CRC32 of the indices of global batch ``k`` (compared across ranks by the engine)."""
        b = self.global_batch_size
        chunk = self.stream()[k * b : (k + 1) * b]
        return zlib.crc32(chunk.numpy().tobytes()) ^ (self.epoch << 1)

    # --- Sampler -----------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        _, mine = self._layout()
        first = self.start // self.global_batch_size
        mine = mine[first * self.loader_batch_size :]
        if self.keyed:
            seed, epoch = self.seed, self.epoch
            return ((seed, epoch, i) for i in mine.tolist())
        return iter(mine.tolist())

    def __len__(self) -> int:
        return (self.num_batches - 1) * self.loader_batch_size + max(
            1, self.real_rows(self.num_batches - 1)
        )

    def __repr__(self) -> str:
        return (
            f"ResumableDistributedSampler(n={self.num_samples_total}, global_batch_size="
            f"{self.global_batch_size}, rank={self.rank}/{self.num_replicas}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last})"
        )
