"""create_supervised_trainer / create_supervised_evaluator on one process."""

import pytest
import torch

from distengine.engine import Events, create_supervised_evaluator, create_supervised_trainer


def _data(n_batches=6, bs=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 1, generator=g)
    out = []
    for _ in range(n_batches):
        x = torch.randn(bs, 4, generator=g)
        out.append((x, x @ w))
    return out


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 1)


def test_trainer_loss_decreases_and_output_is_detached_loss():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = create_supervised_trainer(model, opt, torch.nn.functional.mse_loss)
    losses = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output))
    )
    trainer.run(_data(), max_epochs=5)
    assert losses[-1] < losses[0] * 0.5
    assert not trainer.state.output.requires_grad


def test_gradient_accumulation_equals_big_batch():
    data = _data(n_batches=4, bs=4)
    model_a = _model()
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.1)
    create_supervised_trainer(
        model_a, opt_a, torch.nn.functional.mse_loss, gradient_accumulation_steps=2
    ).run(data, max_epochs=1)
    model_b = _model()
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.1)
    big = [
        (torch.cat([data[i][0], data[i + 1][0]]), torch.cat([data[i][1], data[i + 1][1]]))
        for i in (0, 2)
    ]
    create_supervised_trainer(model_b, opt_b, torch.nn.functional.mse_loss).run(big, max_epochs=1)
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_bad_accumulation_steps():
    model = _model()
    with pytest.raises(
        ValueError, match="Gradient_accumulation_steps must be strictly positive: .* got 0"
    ):
        create_supervised_trainer(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            torch.nn.functional.mse_loss,
            gradient_accumulation_steps=0,
        )


def test_amp_bfloat16_on_cpu_trains():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = create_supervised_trainer(
        model, opt, torch.nn.functional.mse_loss, device="cpu", amp_mode="amp"
    )
    losses = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output))
    )
    trainer.run(_data(), max_epochs=5)
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="amp_mode"):
        create_supervised_trainer(model, opt, torch.nn.functional.mse_loss, amp_mode="apex")
    with pytest.raises(ValueError, match="scaler"):
        create_supervised_trainer(model, opt, torch.nn.functional.mse_loss, scaler=True)


def test_custom_prepare_batch_and_output_transform():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []

    def prep(batch, device, non_blocking):
        seen.append(device)
        return batch["x"], batch["y"]

    trainer = create_supervised_trainer(
        model,
        opt,
        torch.nn.functional.mse_loss,
        device="cpu",
        prepare_batch=prep,
        output_transform=lambda x, y, y_pred, loss: (y_pred.shape, loss.item()),
    )
    data = [{"x": x, "y": y} for x, y in _data(2)]
    trainer.run(data)
    assert seen == ["cpu", "cpu"] and trainer.state.output[0] == torch.Size([8, 1])


def test_evaluator_runs_in_eval_mode_without_grad():
    model = torch.nn.Sequential(torch.nn.Linear(4, 1), torch.nn.Dropout(0.5))
    model.train()
    evaluator = create_supervised_evaluator(model)
    state = evaluator.run(_data(2))
    y_pred, y = state.output
    assert not model.training and not y_pred.requires_grad
    assert torch.equal(y_pred, model(state.batch[0]))  # eval mode: dropout off, deterministic


def test_trainer_reenters_train_mode_after_evaluation():
    model = torch.nn.Sequential(torch.nn.Linear(4, 1), torch.nn.Dropout(0.5))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = create_supervised_trainer(model, opt, torch.nn.functional.mse_loss)
    evaluator = create_supervised_evaluator(model)
    modes = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda: evaluator.run(_data(1)))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda: modes.append(model.training))
    trainer.run(_data(2), max_epochs=2)
    assert modes == [True] * 4
