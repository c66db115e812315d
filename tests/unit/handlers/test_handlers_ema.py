"""EMAHandler: Ignite's averages (the oracle), and an exact resume through Checkpoint."""

import ignite.engine as ig_engine
import ignite.handlers as ig_handlers
import pytest
import torch

from distengine import Engine, Events
from distengine.handlers import Checkpoint, DiskSaver, EMAHandler


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1)
    )


def _step(model, opt):
    def step(engine, batch):
        opt.zero_grad()
        loss = model(batch).pow(2).mean()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def _data():
    return [torch.randn(5, 3, generator=torch.Generator().manual_seed(i)) for i in range(6)]


@pytest.mark.parametrize("handle_buffers", ["copy", "update", "ema_train"])
def test_same_average_as_ignite(handle_buffers):
    results = []
    for engine_mod, handler_cls in ((ig_engine, ig_handlers.EMAHandler), (None, EMAHandler)):
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        trainer = (engine_mod.Engine if engine_mod else Engine)(_step(model, opt))
        ema = handler_cls(
            model, momentum=0.3, momentum_warmup=0.9, warmup_iters=4, handle_buffers=handle_buffers
        )
        ema.attach(trainer)
        trainer.run(_data(), max_epochs=2)
        results.append(ema.ema_model.state_dict())
    for key in results[0]:
        assert torch.allclose(results[0][key].float(), results[1][key].float()), key


def _train(tmp_path, stop_at=None, resume=False):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Engine(_step(model, opt))
    ema = EMAHandler(model, momentum=0.2, momentum_warmup=0.8, warmup_iters=5)
    ema.attach(trainer, name="ema_m", warn_if_exists=False)
    momenta = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: momenta.append(e.state.ema_m))
    to_save = {"trainer": trainer, "model": model, "optimizer": opt, "ema": ema}
    saver = DiskSaver(str(tmp_path), require_empty=False)
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(every=2), Checkpoint(to_save, saver, n_saved=1)
    )
    if stop_at:
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
    if resume:
        Checkpoint.load_objects(to_load=to_save, checkpoint=Checkpoint.latest(str(tmp_path)))
    trainer.run(_data(), max_epochs=2, seed=0)
    return ema.ema_model.state_dict(), momenta


def test_checkpoint_resumes_average_and_warmup_exactly(tmp_path):
    reference, ref_momenta = _train(tmp_path / "ref")
    _train(tmp_path / "run", stop_at=5)
    resumed, momenta = _train(tmp_path / "run", resume=True)
    assert momenta == ref_momenta[4:]  # resumed after the checkpoint of iteration 4
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="Invalid momentum"):
        EMAHandler(torch.nn.Linear(1, 1), momentum=1.5)
    with pytest.raises(ValueError, match="nn.Module"):
        EMAHandler("model")
    with pytest.raises(ValueError, match="handle_buffers"):
        EMAHandler(torch.nn.Linear(1, 1), handle_buffers="mean")
