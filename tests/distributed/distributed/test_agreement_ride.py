"""Agreements riding on a CPU DDP model's gradient all-reduce (distributed/agreement.py).

On real gloo ranks: the ride's OR equals the collective's, gradients are reduced as DDP
reduces them without a hook, a pass without backward falls back to the collective (and
the channel stops riding), a comm hook registered by the user replaces the ride, and the
engine's stop rule is unchanged while riding.
"""

from __future__ import annotations

import pytest
import torch

import distengine.distributed as idist
from distengine.distributed.hangs import IN_FLIGHT
from distengine.engine import Events, create_supervised_trainer

pytestmark = pytest.mark.timeout(120)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


def _train(model: torch.nn.Module, steps: int) -> list[torch.Tensor]:
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    g = torch.Generator().manual_seed(10 + idist.get_rank())
    for _ in range(steps):
        x, y = torch.randn(6, 7, generator=g), torch.randint(0, 3, (6,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _backward(model: torch.nn.Module) -> None:
    model(torch.randn(4, 7)).sum().backward()


def _ride_job(local_rank: int) -> dict:
    rank, out = idist.get_rank(), {}
    riding = idist.auto_model(_net())  # CPU DDP made by distengine: hooked
    plain = torch.nn.parallel.DistributedDataParallel(_net())  # DDP's own reduction
    ours, theirs = _train(riding, 4), _train(plain, 4)
    out["same_weights"] = (
        all(torch.equal(a, b) for a, b in zip(ours, theirs)),
        all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(ours, theirs)),
    )
    # several buckets (bucket 0 carries the ride); the sums do not depend on whether a ride
    # was armed (what an exact resume needs at any world size)
    tiny = 1e-4  # MB: about one parameter per bucket
    armed = idist.auto_model(_net(), bucket_cap_mb=tiny)
    channel = idist.AgreementChannel()
    pending = channel.start(1 << rank)
    with_ride = _train(armed, 3)
    without = _train(idist.auto_model(_net(), bucket_cap_mb=tiny), 3)  # nothing armed
    out["several_buckets"] = (
        all(torch.equal(a, b) for a, b in zip(with_ride, without)),
        pending.wait(),
        channel.riding,
    )

    channel = idist.AgreementChannel()
    out["riding_at_start"] = channel.riding
    flags = (1 << rank) | (1 << 62 if rank == 2 else 0)
    pending = channel.start(flags)
    out["marked_while_armed"] = IN_FLIGHT.name == "agreement"
    _backward(riding)
    out["ride"] = (pending.wait(), pending.wait())  # read twice: the same value
    out["still_riding"] = channel.riding
    out["mark_cleared"] = IN_FLIGHT.name is None

    pending = channel.start(1 << (rank + 3))  # no backward pass carries this one
    out["fallback"] = pending.wait()
    out["riding_after_fallback"] = channel.riding
    out["then_collectives"] = isinstance(channel.start(0), idist.PendingAgreement)

    calls = []

    def user_hook(state, bucket):
        calls.append(bucket.index())
        t = bucket.buffer().div_(idist.get_world_size())
        return (
            torch.distributed.all_reduce(t, async_op=True).get_future().then(lambda f: f.value()[0])
        )

    riding.register_comm_hook(None, user_hook)
    try:
        riding.register_comm_hook(None, user_hook)
        out["second_hook"] = None
    except RuntimeError as e:
        out["second_hook"] = str(e)
    channel = idist.AgreementChannel()
    pending = channel.start(1 << rank)
    _backward(riding)
    out["user_hook"] = (pending.wait(), len(calls) > 0, channel.riding)
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_a_ride_agrees_like_the_collective_and_falls_back_without_backward(world):
    results = idist.spawn(_ride_job, world, backend="gloo")
    everyone = (1 << world) - 1
    for r in results:
        # DDP's reduction: bitwise at world size 2; at 3, to float rounding (gloo may order a
        # sum of three differently for a longer bucket), the same in every iteration
        assert r["same_weights"] == (True, True) if world == 2 else r["same_weights"][1], r
        assert r["several_buckets"] == (True, everyone, True), r
        assert r["riding_at_start"] and r["marked_while_armed"] and r["mark_cleared"], r
        bit62 = 1 << 62 if world > 2 else 0
        assert r["ride"] == (everyone | bit62, everyone | bit62) and r["still_riding"], r
        assert r["fallback"] == everyone << 3 and not r["riding_after_fallback"], r
        assert r["then_collectives"], r
        assert "can only be called once" in r["second_hook"], r
        assert r["user_hook"] == (everyone, True, False), r  # the user's hook, no ride


def _engine_job(local_rank: int, world: int) -> dict:
    model = idist.auto_model(_net())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(3)
    data = [(torch.randn(4, 7, generator=g), torch.randint(0, 3, (4,), generator=g))] * 10
    trainer = create_supervised_trainer(model, opt, torch.nn.functional.cross_entropy)

    @trainer.on(Events.ITERATION_COMPLETED(once=4))
    def _request(engine):
        if idist.get_rank() == world - 1:  # the last rank only
            engine.terminate()

    trainer.run(data, max_epochs=3)
    return {"iteration": trainer.state.iteration, "rode": trainer._channel.riding}


@pytest.mark.parametrize("world", [2, 3])
def test_a_stop_requested_on_one_rank_acts_one_iteration_later_on_all_while_riding(world):
    results = idist.spawn(_engine_job, world, backend="gloo", args=(world,))
    # the rule of the overlapped agreement: made in iteration 4, acted on after iteration 5
    assert results == [{"iteration": 5, "rode": True}] * world
