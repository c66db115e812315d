"""A global batch that does not divide by the world size (what an elastic job meets).

``auto_dataloader(batch_size=10)`` on 3 gloo ranks gives shares 4, 3, 3 of the same global
batches as one process, and ``create_supervised_trainer`` weights each rank's loss by its
share, so DDP's gradient average is the mean over the global batch: the weights match a
one-process run to float tolerance. Without the weights (each rank's mean loss counted
alike) they would not, which the control below shows.
"""

import pytest
import torch

import distengine.distributed as idist
from distengine.data import ResumableDistributedSampler
from distengine.engine import Events, create_supervised_trainer

N, GLOBAL_BATCH, EPOCHS, LR = 40, 10, 2, 0.5


def _data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, 4, generator=g)
    return torch.utils.data.TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]))


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 1)


def _train(local_rank=0):
    model = idist.auto_model(_model())
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loader = idist.auto_dataloader(_data(), batch_size=GLOBAL_BATCH, shuffle=True)
    trainer = create_supervised_trainer(model, opt, torch.nn.functional.mse_loss)
    seen = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: seen.append(len(e.state.batch[0]))
    )
    trainer.run(loader, max_epochs=EPOCHS, seed=5)
    net = model.module if hasattr(model, "module") else model
    return {
        "weight": net.weight.detach().clone(),
        "bias": net.bias.detach().clone(),
        "share": loader.sampler.local_batch_size,
        "loss_weight": loader.sampler.loss_weight,
        "batch_sizes": sorted(set(seen)),
    }


def _unweighted_three_rank_run():
    """What DDP would compute without loss weights: the mean of the ranks' mean gradients."""
    model, data = _model(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    samplers = [ResumableDistributedSampler(N, GLOBAL_BATCH, 3, r, seed=5) for r in range(3)]
    for epoch in range(EPOCHS):
        parts = []
        for s in samplers:
            s.set_epoch(epoch)
            parts.append(list(s))
        for k in range(N // GLOBAL_BATCH):
            opt.zero_grad()
            for s, idx in zip(samplers, parts):
                b = s.local_batch_size
                x, y = data[idx[k * b : (k + 1) * b]]
                (torch.nn.functional.mse_loss(model(x), y) / 3).backward()
            opt.step()
    return {"weight": model.weight.detach(), "bias": model.bias.detach()}


def test_unequal_shares_train_like_one_process():
    one = _train()
    ranks = idist.spawn(_train, 3)
    assert [r["share"] for r in ranks] == [4, 3, 3]
    assert [r["batch_sizes"] for r in ranks] == [[4], [3], [3]]
    assert [r["loss_weight"] for r in ranks] == pytest.approx([1.2, 0.9, 0.9])
    for r in ranks:  # DDP keeps the replicas identical
        assert torch.equal(r["weight"], ranks[0]["weight"]) and torch.equal(
            r["bias"], ranks[0]["bias"]
        )
    for key in ("weight", "bias"):
        assert torch.allclose(ranks[0][key], one[key], rtol=1e-5, atol=1e-6), (
            key,
            (ranks[0][key] - one[key]).abs().max().item(),
        )
    # control: counting each rank's mean loss alike gives other weights
    naive = _unweighted_three_rank_run()
    assert (naive["weight"] - one["weight"]).abs().max().item() > 1e-3


def test_even_shares_keep_the_loss_untouched():
    s = ResumableDistributedSampler(N, 12, 3, 1)
    assert (s.local_batch_size, s.loss_weight) == (4, 1.0)
    with pytest.raises(ValueError, match="at least one sample per rank"):
        ResumableDistributedSampler(N, 2, 3, 0)
