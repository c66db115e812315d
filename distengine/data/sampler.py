"""A sampler whose order is a pure function of (seed, data pass) and that can start mid-pass.

Layout of one pass (``N`` samples, global batch ``B``, ``W`` ranks):

- the *stream* is a permutation of ``range(N)`` (identity when ``shuffle=False``),
  drawn from ``(seed, pass)``; with ``drop_last`` the last partial global batch is cut,
  otherwise the stream is padded at its end by wrapping around to its start;
- global batch ``k`` is ``stream[k*B:(k+1)*B]`` and rank ``r`` takes a contiguous slice of
  it: ``b_r`` samples starting at offset ``o_r``. With ``B`` divisible by ``W`` every rank
  takes ``B // W``; otherwise the first ``B % W`` ranks take one more (``B = 10``,
  ``W = 3``: 4, 3, 3), so the global batch never changes with the world size.

So every rank gets the same number of batches, the global batches do not depend on the
world size, and a pass can restart at any global sample offset without touching the
samples before it. Padded rows are always at the end of a rank's batch;
:meth:`padding_in_batch` says how many, and metrics skip them. With unequal shares a
rank's mean loss must count in proportion to its share for the gradient to be the mean
over the global batch: :attr:`ResumableDistributedSampler.loss_weight` is that factor
(exactly 1.0 when the shares are equal).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sized
from typing import Any

import torch

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
    already delivered in the pass.

    Args:
        data_source: the dataset (or anything with ``len``), or the number of samples.
        global_batch_size: samples per global batch (all ranks together).
        num_replicas: world size (default: the current one).
        rank: this rank (default: the current one).
        shuffle: draw a permutation per pass; ``False`` keeps the dataset order.
        seed: seed used until the engine sets the run's seed.
        drop_last: cut the last partial global batch instead of padding it.
        keyed: yield ``(seed, data_pass, index)`` keys for :class:`SeededDataset`
            instead of plain indices.

    Example:
        >>> s = ResumableDistributedSampler(10, global_batch_size=4, num_replicas=2, rank=1)
        >>> s.set_epoch(0); s.set_start(4); len(list(s))
        4
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
            from distengine import distributed as idist

            num_replicas = idist.get_world_size() if num_replicas is None else num_replicas
            rank = idist.get_rank() if rank is None else rank
        n = data_source if isinstance(data_source, int) else len(data_source)
        if n < 1:
            raise ValueError(f"Expected a non-empty data source, got {n} samples")
        if not isinstance(global_batch_size, int) or global_batch_size < 1:
            raise ValueError(f"global_batch_size must be a positive int, got {global_batch_size!r}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"Expected 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}"
            )
        if global_batch_size < num_replicas:
            raise ValueError(
                f"The global batch must hold at least one sample per rank: got batch_size="
                f"{global_batch_size} for {num_replicas} ranks"
            )
        if drop_last and n < global_batch_size:
            raise ValueError(
                f"drop_last=True with {n} samples and a global batch of {global_batch_size} leaves no batch"
            )
        self.num_samples_total = n
        self.global_batch_size = global_batch_size
        share, extra = divmod(global_batch_size, num_replicas)
        self.local_batch_size = share + (1 if rank < extra else 0)
        """This rank's samples per batch (its share of the global batch)."""
        self.rank_offset = rank * share + min(rank, extra)
        """Where this rank's share starts in each global batch."""
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.keyed = keyed
        self.epoch = 0
        self.start = 0
        self._cache: tuple[tuple[int, int], torch.Tensor] | None = None

    # --- the engine drives these -------------------------------------------------
    def set_seed(self, seed: int) -> None:
        self.seed = int(seed)

    def set_epoch(self, epoch: int) -> None:
        """Selects the data pass (its permutation)."""
        self.epoch = int(epoch)

    def set_start(self, global_samples: int) -> None:
        """Starts the next iteration at a global sample offset of the pass (a batch boundary)."""
        if global_samples < 0 or global_samples % self.global_batch_size:
            raise ValueError(
                f"The start must be a non-negative multiple of the global batch size "
                f"{self.global_batch_size}, got {global_samples}"
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
        """Global samples delivered in one full pass, padding included."""
        return self.num_batches * self.global_batch_size

    @property
    def total_padding(self) -> int:
        """Padded samples in one pass (all ranks)."""
        return max(0, self.pass_length - self.num_samples_total)

    @property
    def loss_weight(self) -> float:
        """Factor for this rank's mean loss so that DDP's gradient average is the mean over
        the global batch: ``world_size * local_batch_size / global_batch_size``.

        Exactly 1.0 when the global batch divides by the world size (so multiplying by it
        changes nothing); with unequal shares (``B = 10`` on 3 ranks: 1.2, 0.9, 0.9) it
        makes the optimizer see the same gradient at any world size, to float tolerance.
        ``create_supervised_trainer`` applies it; a hand-written step multiplies its loss
        by it before ``backward``.

        Example:
            >>> [ResumableDistributedSampler(30, 10, num_replicas=3, rank=r).loss_weight for r in range(3)]
            [1.2, 0.9, 0.9]
        """
        return self.num_replicas * self.local_batch_size / self.global_batch_size

    def padding_in_batch(self, k: int) -> int:
        """Padded rows at the end of this rank's ``k``-th batch of the pass."""
        lo = k * self.global_batch_size + self.rank_offset
        hi = lo + self.local_batch_size
        return max(0, hi - max(lo, self.num_samples_total))

    def stream(self) -> torch.Tensor:
        """The pass's global order of sample indices, padding included (cached)."""
        key = (self.seed, self.epoch)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        n = self.num_samples_total
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(mix_seed(self.seed, self.epoch))
            perm = torch.randperm(n, generator=g)
        else:
            perm = torch.arange(n)
        total = self.pass_length
        if total > n:
            reps = -(-total // n)
            perm = perm.repeat(reps)[:total]
        else:
            perm = perm[:total]
        self._cache = (key, perm)
        return perm

    def global_batch_digest(self, k: int) -> int:
        """CRC32 of the indices of global batch ``k`` (compared across ranks by the engine)."""
        b = self.global_batch_size
        chunk = self.stream()[k * b : (k + 1) * b]
        return zlib.crc32(chunk.numpy().tobytes()) ^ (self.epoch << 1)

    # --- Sampler -----------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        stream = self.stream()
        b, lb, lo = self.global_batch_size, self.local_batch_size, self.rank_offset
        first = self.start // b
        # rank r's indices: for each global batch k, the slice [k*b + o_r, k*b + o_r + b_r)
        mine = stream.view(self.num_batches, b)[first:, lo : lo + lb].reshape(-1)
        if self.keyed:
            seed, epoch = self.seed, self.epoch
            return ((seed, epoch, i) for i in mine.tolist())
        return iter(mine.tolist())

    def __len__(self) -> int:
        return self.num_batches * self.local_batch_size

    def __repr__(self) -> str:
        return (
            f"ResumableDistributedSampler(n={self.num_samples_total}, global_batch_size="
            f"{self.global_batch_size}, rank={self.rank}/{self.num_replicas}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last})"
        )
