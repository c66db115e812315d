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
    # what a DataLoader with batch_size=s.loader_batch_size makes of the indices
    lb = s.loader_batch_size
    return [idx[i : i + lb] for i in range(0, len(idx), lb)], s


def _global_batches(n, gbs, world, **kw):
    per_rank = [_rank_batches(n, gbs, world, r, **kw) for r in range(world)]
    assert len({len(b) for b, _ in per_rank}) == 1, "every rank must get the same number of batches"
    first = kw.get("start", 0) // gbs
    out = []
    for k in range(len(per_rank[0][0])):
        batch = []
        for batches, s in per_rank:
            rows = batches[k]
            batch += rows[: len(rows) - s.padding_in_batch(first + k)]  # real rows only
        out.append(batch)
    return out


@pytest.mark.parametrize("n", [24, 25, 31, 7])
@pytest.mark.parametrize("gbs", [12, 10, 5])
def test_global_batches_do_not_depend_on_world_size(n, gbs):
    ref = _global_batches(n, gbs, 1)
    assert sorted(sum(ref, [])) == list(range(n))  # a pass reads every sample once
    for world in (2, 3, 4, 6):
        assert _global_batches(n, gbs, world) == ref, world
        assert _global_batches(n, gbs, world, start=gbs) == ref[1:], world


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


def test_no_padding_at_world_size_one():
    batches, s = _rank_batches(10, 64, 1, 0, shuffle=False)
    assert batches == [list(range(10))]  # one short batch: no duplicate rows
    assert s.batch_geometry(0) == (10, 0, 1.0)
    batches, s = _rank_batches(10, 4, 1, 0, shuffle=False)
    assert [len(b) for b in batches] == [4, 4, 2] and s.padding_in_batch(2) == 0


def test_padding_is_one_row_for_a_rank_left_without_samples():
    # 10 samples, global batch 4, 2 ranks: the last global batch [8, 9] is rank 0's
    batches, s = _rank_batches(10, 4, 2, 1, shuffle=False)
    assert batches == [[2, 3], [6, 7], [8]]  # rank 1's last batch: one padding row
    assert [s.batch_geometry(k) for k in range(3)] == [(2, 0, 1.0), (2, 0, 1.0), (0, 1, 0.0)]
    batches0, s0 = _rank_batches(10, 4, 2, 0, shuffle=False)
    assert batches0 == [[0, 1], [4, 5], [8, 9]]
    assert s0.batch_geometry(2) == (2, 0, 2.0)  # 2 rows * 2 ranks / 2 samples in the batch
    assert s0.first_irregular_batch == s.first_irregular_batch == 2
    dropped = _global_batches(10, 4, 2, shuffle=False, drop_last=True)
    assert dropped == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_uneven_shares_weight_the_loss_to_the_global_mean():
    # global batch 5 over 2 ranks: shares 3 and 2; weights make DDP's mean the global mean
    world, gbs, n = 2, 5, 12
    samplers = [
        ResumableDistributedSampler(n, gbs, num_replicas=world, rank=r) for r in range(world)
    ]
    assert [s.loader_batch_size for s in samplers] == [3, 2]
    assert all(s.first_irregular_batch == 0 for s in samplers)
    for k in range(samplers[0].num_batches):
        geo = [s.batch_geometry(k) for s in samplers]
        assert sum(real for real, _, _ in geo) == samplers[0].global_rows(k)
        # sum over ranks of (weight * mean over real rows) / world == mean over the batch
        assert sum(w for _, _, w in geo) == pytest.approx(world * (1 if geo[1][0] else 1))
        for real, _, w in geo:
            assert w == pytest.approx(real * world / samplers[0].global_rows(k))


def test_eval_every_sample_once_any_batch_size():
    for n, world, gbs in [(10, 3, 6), (7, 2, 4), (5, 4, 8), (10, 3, 8), (9, 4, 2), (13, 5, 7)]:
        seen = []
        for r in range(world):
            batches, s = _rank_batches(n, gbs, world, r, shuffle=False)
            for k, b in enumerate(batches):
                seen += b[: len(b) - s.padding_in_batch(k)]
        assert sorted(seen) == list(range(n)), (n, world, gbs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(data_source=0, global_batch_size=4, num_replicas=1, rank=0), "non-empty"),
        (dict(data_source=10, global_batch_size=0, num_replicas=1, rank=0), "positive"),
        (dict(data_source=10, global_batch_size=2.0, num_replicas=1, rank=0), "positive"),
        (dict(data_source=10, global_batch_size=4, num_replicas=2, rank=2), "rank"),
        (dict(data_source=10, global_batch_size=4, num_replicas=1, rank=0, seed=-1), "seed"),
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
    with pytest.raises(ValueError, match="multiple"):
        s.set_start(-4)


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


def test_seeded_dataset_restores_cached_gaussians_exactly():
    """Reading a sample in the main process must not change any later draw of the caller,
    including the second value of a pair that numpy, ``random`` and torch draw together
    and cache (numpy's legacy ``gauss`` cache was lost before)."""

    class Gaussians(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return np.random.normal(), random.gauss(0, 1), torch.randn(1).item()

    ds = SeededDataset(Gaussians())

    def caller_draws(read_between):
        np.random.seed(0)
        random.seed(0)
        torch.manual_seed(0)
        first = (np.random.normal(), random.gauss(0, 1), torch.randn(3))  # leaves caches full
        if read_between:
            ds.__getitems__([(1, 2, 3), (1, 2, 0)])
        return first, (np.random.normal(), random.gauss(0, 1), torch.randn(3))

    plain, with_read = caller_draws(False), caller_draws(True)
    assert plain[1][0] == with_read[1][0]
    assert plain[1][1] == with_read[1][1]
    assert torch.equal(plain[1][2], with_read[1][2])


class _Draws(torch.utils.data.Dataset):
    """Draws from the generators named in ``uses`` (for the indices ``when`` accepts) and
    counts its reads."""

    def __init__(self, uses=(), when=lambda i: True):
        self.uses, self.when, self.reads = uses, when, 0

    def __len__(self):
        return 16

    def __getitem__(self, i):
        self.reads += 1
        draw = self.when(i)
        return (
            i,
            torch.rand(1).item() if draw and "torch" in self.uses else 0.0,
            random.gauss(0, 1) if draw and "random" in self.uses else 0.0,  # caches one
            float(np.random.normal()) if draw and "numpy" in self.uses else 0.0,  # caches one
        )


def _batches(ds, keys_per_batch):
    return [ds.__getitems__(keys) for keys in keys_per_batch]


def _caller_draws():
    return (torch.rand(2).tolist(), random.random(), random.gauss(0, 1), float(np.random.normal()))


def _seed_caller(s):
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s)
    random.gauss(0, 1)  # a Gaussian cached in random and in numpy: must survive a read
    np.random.normal()


BATCHES = [[(5, 1, i) for i in range(j, j + 4)] for j in range(0, 16, 4)]


@pytest.mark.parametrize(
    "uses,when,rereads",
    [
        ((), None, 0),
        (("torch",), None, 0),
        (("random",), None, 0),
        (("numpy",), None, 0),
        (("torch", "random", "numpy"), None, 0),
        (("random", "torch"), lambda i: i % 5 == 3, 0),  # seen in the first batch (i = 3)
        (("numpy",), lambda i: i == 9, 4),  # first drawn from in the third batch: read again
        (("torch", "numpy"), lambda i: i in (14, 15), 4),  # in the last batch
    ],
)
def test_lazy_seeding_gives_the_samples_of_seeding_every_sample(uses, when, rereads):
    """Whatever a dataset draws, and from whichever batch on, the lazily seeded samples are
    the eagerly seeded ones, whatever state the caller's generators are in, and the caller's
    next draws are those it would have made without reading. Every sample is read once,
    except a batch that draws from a generator not seen drawn from before."""
    when = when or (lambda i: True)
    _seed_caller(0)
    expected = _batches(SeededDataset(_Draws(uses, when), lazy=False), BATCHES)
    _seed_caller(1)
    plain = _caller_draws()
    for caller_seed in (1, 2):  # another caller state: same samples
        _seed_caller(caller_seed)
        inner = _Draws(uses, when)
        ds = SeededDataset(inner)
        got = _batches(ds, BATCHES)
        assert got == expected
        if caller_seed == 1:
            assert _caller_draws() == plain  # the caller's generators were left as they were
        assert ds.drawn == set(uses)
        assert inner.reads == 16 + rereads


def test_lazy_seeding_seeds_nothing_for_a_dataset_that_draws_nothing():
    """No generator is touched: a draw-free dataset reads as fast as the plain one."""
    ds = SeededDataset(_Draws())
    _seed_caller(3)
    before = (torch.default_generator.get_state(), random.getstate(), np.random.get_state())
    _batches(ds, BATCHES)
    after = (torch.default_generator.get_state(), random.getstate(), np.random.get_state())
    assert torch.equal(before[0], after[0]) and before[1] == after[1]
    assert all(np.array_equal(a, b) for a, b in zip(before[2], after[2]))
    assert ds.drawn == set()


def test_lazy_seeding_in_workers_gives_the_same_samples():
    from distengine.distributed import auto_dataloader

    def collect(lazy, workers):
        ds = SeededDataset(_Draws(("torch", "numpy"), lambda i: i > 6), lazy=lazy)
        loader = auto_dataloader(ds, batch_size=4, num_workers=workers)
        loader.sampler.set_seed(9)
        return [[t.tolist() for t in b] for b in loader]

    assert collect(True, 0) == collect(True, 2) == collect(False, 0) == collect(False, 2)


def test_eager_seeding_covers_draws_whose_state_is_put_back():
    """A read that draws inside torch.random.fork_rng() leaves no trace for the lazy check;
    with lazy=False its draws are still a function of the key."""

    class Forked(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            with torch.random.fork_rng(devices=[]):
                return torch.rand(1).item()

    ds = SeededDataset(Forked(), lazy=False)
    torch.manual_seed(1)
    a = ds.__getitems__([(0, 0, 1), (0, 0, 2)])
    torch.manual_seed(2)
    assert ds.__getitems__([(0, 0, 1), (0, 0, 2)]) == a
    with pytest.raises(TypeError, match="lazy must be a bool, got int"):
        SeededDataset(Forked(), lazy=1)


@pytest.mark.parametrize("uses", [("random",), ("numpy",), ("torch",)])
def test_lazy_seeding_sees_a_draw_that_only_takes_a_cached_gaussian(uses):
    """One Gaussian per sample, batches of one: with the caller holding a cached Gaussian,
    the first read only takes that cached value (the generator's words do not move)."""
    ds_eager = SeededDataset(_Draws(uses), lazy=False)
    ds_lazy = SeededDataset(_Draws(uses))
    one_by_one = [[(5, 1, i)] for i in range(3)]
    _seed_caller(4)
    if "torch" in uses:
        torch.randn(1)  # torch caches no Gaussian for a single value; its state moves
    expected = _batches(ds_eager, one_by_one)
    _seed_caller(4)
    assert _batches(ds_lazy, one_by_one) == expected
    assert ds_lazy.drawn == set(uses)


def test_workers_per_rank_follows_ignites_rule():
    from distengine.data.loader import workers_per_rank

    assert workers_per_rank(0, 2) == 0
    assert workers_per_rank(8, 2) == 4
    assert workers_per_rank(4, 3) == 2  # ceil(4 / 3)
    # fewer workers than processes on the node: every rank starts them as given (Ignite)
    assert workers_per_rank(2, 3) == 2
    assert workers_per_rank(1, 8) == 1
