"""Unequal shares of the global batch (a world size that does not divide it).

Whatever the world size, rank r's slices put side by side in rank order are the same global
batches as one process's, mid-pass starts included, and padding is counted where it lies.
"""

import pytest

from distengine.data import ResumableDistributedSampler


def _ranks(n, batch, world, **kw):
    return [ResumableDistributedSampler(n, batch, world, r, seed=11, **kw) for r in range(world)]


def _global_batches(samplers, epoch, start):
    parts = []
    for s in samplers:
        s.set_epoch(epoch)
        s.set_start(start)
        parts.append(list(s))
    k = len(parts[0]) // samplers[0].local_batch_size
    assert all(len(p) // s.local_batch_size == k for p, s in zip(parts, samplers))
    return [
        sum(
            (
                p[i * s.local_batch_size : (i + 1) * s.local_batch_size]
                for p, s in zip(parts, samplers)
            ),
            [],
        )
        for i in range(k)
    ]


@pytest.mark.parametrize("world", [2, 3, 4, 7])
@pytest.mark.parametrize("drop_last", [False, True])
def test_same_global_batches_at_any_world_size(world, drop_last):
    one = _global_batches(_ranks(53, 10, 1, drop_last=drop_last), epoch=2, start=20)
    many = _ranks(53, 10, world, drop_last=drop_last)
    assert _global_batches(many, epoch=2, start=20) == one
    shares = [s.local_batch_size for s in many]
    assert sum(shares) == 10 and max(shares) - min(shares) <= 1
    assert shares == sorted(shares, reverse=True)  # the first ranks take the extra samples
    # the weights average to 1: the DDP mean of weighted rank losses is the global mean
    assert sum(s.loss_weight for s in many) / world == pytest.approx(1.0)


def test_padding_lies_at_the_end_of_the_global_batch():
    # 53 samples, batch 10: the last global batch holds 3 real samples and 7 padded rows
    shares = _ranks(53, 10, 3)  # 4, 3, 3 -> rows [0,4) [4,7) [7,10) of the batch
    assert [s.padding_in_batch(5) for s in shares] == [1, 3, 3]
    assert [s.padding_in_batch(4) for s in shares] == [0, 0, 0]
    assert sum(s.padding_in_batch(5) for s in shares) == shares[0].total_padding == 7
