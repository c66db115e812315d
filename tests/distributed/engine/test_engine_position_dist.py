"""Run position and batch geometry on 2-3 gloo ranks (idist.spawn, real processes)."""

import torch

import distengine.distributed as idist
from distengine.engine import Events, create_supervised_evaluator, create_supervised_trainer
from distengine.handlers import Checkpoint, DiskSaver
from distengine.metrics import Accuracy, Loss


class Augmented(torch.utils.data.Dataset):
    """Fixed inputs plus per-read noise (random augmentation seeded per sample)."""

    def __init__(self, n):
        g = torch.Generator().manual_seed(11)
        self.x = torch.randn(n, 6, generator=g)
        self.y = self.x.sum(1, keepdim=True)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.rand(6), self.y[i]


def _resumable_job(local_rank, ckpt_dir, stop_at):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    model = idist.auto_model(net)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    trainer = create_supervised_trainer(model, opt, torch.nn.functional.mse_loss)
    to_save = {"model": model, "optimizer": opt, "trainer": trainer}
    # a checkpoint written when the run stops: the common "time budget" pattern
    trainer.add_event_handler(
        Events.TERMINATE, Checkpoint(to_save, DiskSaver(ckpt_dir, require_empty=False))
    )
    latest = Checkpoint.latest(ckpt_dir)
    if latest is not None:
        Checkpoint.load_objects(to_load=to_save, checkpoint=latest)
    if stop_at is not None and idist.get_rank() == 1:  # requested on a non-zero rank only
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
    # 26 samples, global batch 4: 7 iterations per epoch, rank 1's last batch is padding
    loader = idist.auto_dataloader(Augmented(26), batch_size=4)
    state = trainer.run(loader, max_epochs=2, seed=7)
    return {
        "iteration": state.iteration,
        "resumed_from": latest is not None,
        "model": {k: v.clone() for k, v in net.state_dict().items()},
        "opt": opt.state_dict()["state"],
    }


def test_terminate_on_rank_1_checkpoint_new_processes_resume_is_bitwise(tmp_path):
    ref = idist.spawn(_resumable_job, 2, args=(str(tmp_path / "ref"), None))
    first = idist.spawn(_resumable_job, 2, args=(str(tmp_path / "run"), 5))
    # requested in iteration 5 on rank 1: both ranks stop after iteration 6 (the overlapped
    # agreement), mid-epoch
    assert [r["iteration"] for r in first] == [6, 6]
    second = idist.spawn(_resumable_job, 2, args=(str(tmp_path / "run"), None))
    assert [r["resumed_from"] for r in second] == [True, True]
    assert [r["iteration"] for r in second] == [14, 14]
    for r, (a, b) in enumerate(zip(ref, second)):
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), (r, k)
        for p in a["opt"]:
            for name in a["opt"][p]:
                assert torch.equal(
                    torch.as_tensor(a["opt"][p][name]), torch.as_tensor(b["opt"][p][name])
                ), (r, p, name)


def _sgd_job(local_rank, batch_size, n):
    """One epoch of plain SGD; returns the weights and what rank saw of the last batch."""
    torch.manual_seed(0)
    net = torch.nn.Linear(6, 1)
    model = idist.auto_model(net)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = create_supervised_trainer(model, opt, torch.nn.functional.mse_loss)
    geometry = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: geometry.append((e.state.batch_padding, e.state.batch_loss_scale)),
    )
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 6, generator=g)
    ds = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    trainer.run(idist.auto_dataloader(ds, batch_size=batch_size), max_epochs=1, seed=1)
    return {k: v.clone() for k, v in net.state_dict().items()}, geometry


def test_padded_and_uneven_batches_train_like_one_process():
    for batch_size in (4, 5):  # 10 samples: a padding row on rank 1 (4); shares 3 and 2 (5)
        alone, alone_geo = _sgd_job(0, batch_size, 10)
        assert all(g == (0, 1.0) for g in alone_geo)  # nothing padded at world size 1
        results = idist.spawn(_sgd_job, 2, args=(batch_size, 10))
        for weights, _ in results:
            for k in alone:
                torch.testing.assert_close(weights[k], alone[k], rtol=1e-5, atol=1e-6)
        if batch_size == 4:
            assert results[1][1][-1] == (1, 0.0)  # rank 1's last batch: one padding row
            assert results[0][1][-1] == (0, 2.0)  # rank 0 holds the whole last batch
        else:
            assert [results[r][1][0][1] for r in (0, 1)] == [1.2, 0.8]  # 3*2/5, 2*2/5


def _eval_job(local_rank, batch_size):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(10, 4, generator=g)
    y = torch.randint(0, 3, (10,), generator=g)
    loader = idist.auto_dataloader(
        torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=False
    )
    evaluator = create_supervised_evaluator(
        model, metrics={"acc": Accuracy(), "loss": Loss(torch.nn.functional.cross_entropy)}
    )
    m = evaluator.run(loader).metrics
    with torch.no_grad():
        logits = model(x)
    expected = {
        "acc": (logits.argmax(1) == y).sum().item() / len(y),
        "loss": torch.nn.functional.cross_entropy(logits, y).item(),
    }
    workers = idist.auto_dataloader(loader.dataset, batch_size=3, num_workers=4).num_workers
    return m, expected, len(loader), workers


def test_evaluation_takes_any_global_batch_size_and_stays_exact():
    for r, (m, expected, n_batches, workers) in enumerate(idist.spawn(_eval_job, 3, args=(8,))):
        assert n_batches == 2, r  # 10 samples in global batches of 8, shares 3, 3, 2
        assert workers == 2, r  # num_workers is per node (Ignite's meaning): ceil(4 / 3)
        assert m["acc"] == expected["acc"], r
        assert abs(m["loss"] - expected["loss"]) < 1e-6, r
