"""``distengine.distributed.auto``: Ignite's import path and DistributedProxySampler."""

import pytest
import torch
from torch.utils.data import DistributedSampler, Sampler, WeightedRandomSampler

import distengine.distributed as idist
from distengine.distributed import auto
from distengine.engine import Engine


def _weighted(n=40, draws=50):
    weights = torch.ones(n)
    weights[: n // 2] += 1
    return WeightedRandomSampler(weights, draws)


def test_the_auto_helpers_are_idists():
    assert auto.auto_dataloader is idist.auto_dataloader
    assert auto.auto_model is idist.auto_model
    assert auto.auto_optim is idist.auto_optim


@pytest.mark.parametrize("replicas", [1, 2, 3, 8])
def test_ranks_together_draw_the_wrapped_samplers_indices_for_the_epoch(replicas):
    sampler = _weighted()
    proxies = [
        auto.DistributedProxySampler(sampler, num_replicas=replicas, rank=r)
        for r in range(replicas)
    ]
    for epoch in range(5):
        torch.manual_seed(epoch)
        expected = list(sampler)
        for p in proxies:
            p.set_epoch(epoch)
        per_rank = [list(p) for p in proxies]
        assert all(len(ix) == len(proxies[0]) == -(-50 // replicas) for ix in per_rank)
        # interleaved back in order, they are the sampler's draws (repeated to fill up)
        merged = [per_rank[i % replicas][i // replicas] for i in range(50)]
        assert merged == expected


def test_the_global_rng_is_left_alone_and_seed_shifts_the_order():
    proxy = auto.DistributedProxySampler(_weighted(), num_replicas=2, rank=0)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = list(proxy)
    assert torch.equal(torch.get_rng_state(), before)
    assert list(proxy) == first  # a function of (seed, epoch)
    other = auto.DistributedProxySampler(_weighted(), num_replicas=2, rank=0, seed=7)
    assert list(other) != first


def test_defaults_are_this_processs_rank_and_world_size():
    proxy = auto.DistributedProxySampler(_weighted())
    assert (proxy.num_replicas, proxy.rank, len(proxy)) == (1, 0, 50)


def test_with_a_plain_dataloader_the_engine_sets_the_epoch():
    proxy = auto.DistributedProxySampler(_weighted(draws=8), num_replicas=1, rank=0)
    loader = torch.utils.data.DataLoader(list(range(40)), batch_size=4, sampler=proxy)
    passes = []
    eng = Engine(lambda e, b: passes.append((e.state.epoch, proxy.epoch)))
    eng.run(loader, max_epochs=3)
    assert sorted(set(passes)) == [(1, 0), (2, 1), (3, 2)]


def test_bad_samplers_are_refused():
    with pytest.raises(TypeError, match="should be instance of torch Sampler, got NoneType"):
        auto.DistributedProxySampler(None)
    with pytest.raises(TypeError, match="should have length, Sampler has none"):
        auto.DistributedProxySampler(Sampler())
    with pytest.raises(TypeError, match="must not be a distributed sampler already"):
        auto.DistributedProxySampler(DistributedSampler(list(range(4)), num_replicas=2, rank=0))

    class Empty(Sampler):
        def __len__(self):
            return 3

        def __iter__(self):
            return iter(())

    with pytest.raises(RuntimeError, match="has length 3 but yielded no index"):
        list(auto.DistributedProxySampler(Empty()))
