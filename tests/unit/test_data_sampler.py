"""ResumableDistributedSampler geometry and SeededDataset, one process (ranks simulated by args)."""

import random

import numpy as np
import pytest
import torch

from distengine.data import ResumableDistributedSampler, SeededDataset


def _rank_batches(n, gbs, world, rank, seed=3, epoch=0, shuffle=True, drop_last=False, start=0):
    s = ResumableDistributedSampler(
        n, gbs, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    s.set_epoch(epoch)
    s.set_start(start)
    idx = list(s)
    lb = gbs // world
    return [idx[i : i + lb] for i in range(0, len(idx), lb)], s


def _global_batches(n, gbs, world, **kw):
    per_rank = [_rank_batches(n, gbs, world, r, **kw)[0] for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1, "every rank must get the same number of batches"
    return [sum((per_rank[r][k] for r in range(world)), []) for k in range(len(per_rank[0]))]


@pytest.mark.parametrize("n", [24, 25, 31])
def test_global_batches_do_not_depend_on_world_size(n):
    ref = _global_batches(n, 12, 1)
    for world in (2, 3, 4, 6):
        assert _global_batches(n, 12, world) == ref


def test_one_permutation_per_pass_function_of_seed_and_pass():
    a = _global_batches(20, 4, 2, seed=1, epoch=0)
    assert a == _global_batches(20, 4, 2, seed=1, epoch=0)
    assert a != _global_batches(20, 4, 2, seed=1, epoch=1)
    assert a != _global_batches(20, 4, 2, seed=2, epoch=0)
    assert sorted(sum(a, [])) == list(range(20))


def test_start_skips_without_producing_skipped_indices():
    full = _global_batches(40, 8, 2)
    resumed = _global_batches(40, 8, 2, start=24)
    assert resumed == full[3:]


def test_padding_recorded_and_drop_last():
    batches, s = _rank_batches(10, 4, 2, 1, shuffle=False)
    # stream 0..9 + pad [0, 1]; global batch 2 = [8, 9, 0, 1]: rank 1 gets [0, 1], both padding
    assert batches == [[2, 3], [6, 7], [0, 1]]
    assert s.total_padding == 2 and [s.padding_in_batch(k) for k in range(3)] == [0, 0, 2]
    _, s0 = _rank_batches(10, 4, 2, 0, shuffle=False)
    assert [s0.padding_in_batch(k) for k in range(3)] == [0, 0, 0]
    dropped = _global_batches(10, 4, 2, shuffle=False, drop_last=True)
    assert dropped == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_eval_every_sample_once_without_padding():
    for n, world in [(10, 3), (7, 2), (5, 4)]:
        gbs = world * 2
        seen = []
        for r in range(world):
            batches, s = _rank_batches(n, gbs, world, r, shuffle=False)
            for k, b in enumerate(batches):
                seen += b[: len(b) - s.padding_in_batch(k)]
        assert sorted(seen) == list(range(n))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            dict(data_source=10, global_batch_size=1, num_replicas=2, rank=0),
            "at least one sample per rank",
        ),
        (dict(data_source=0, global_batch_size=4, num_replicas=1, rank=0), "non-empty"),
        (dict(data_source=10, global_batch_size=0, num_replicas=1, rank=0), "positive"),
        (dict(data_source=10, global_batch_size=4, num_replicas=2, rank=2), "rank"),
        (
            dict(data_source=3, global_batch_size=4, num_replicas=1, rank=0, drop_last=True),
            "no batch",
        ),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResumableDistributedSampler(**kwargs)


def test_set_start_must_be_batch_aligned():
    s = ResumableDistributedSampler(20, 4, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="multiple"):
        s.set_start(3)


class _Augmented(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return (torch.rand(1).item(), random.random(), float(np.random.rand()), i)


def test_seeded_dataset_is_a_function_of_key_and_keeps_global_rng():
    ds = SeededDataset(_Augmented())
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    before = (torch.rand(1), random.random(), np.random.rand())
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    a = ds[(1, 2, 3)]
    after = (torch.rand(1), random.random(), np.random.rand())
    assert before[0].item() == after[0].item() and before[1:] == after[1:]
    assert ds[(1, 2, 3)] == a
    assert ds[(1, 3, 3)] != a and ds[(2, 2, 3)] != a
    assert ds[3][3] == 3 and len(ds) == 8


def test_seeded_dataset_same_samples_with_workers():
    from distengine.distributed import auto_dataloader

    def collect(workers):
        loader = auto_dataloader(_Augmented(), batch_size=4, num_workers=workers)
        loader.sampler.set_seed(9)
        return [tuple(map(tuple, (t.tolist() for t in b))) for b in loader]

    assert collect(0) == collect(2)
