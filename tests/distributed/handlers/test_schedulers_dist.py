"""A learning-rate schedule checkpointed on 2 gloo ranks and resumed on 3: after the resume
every rank sets the same learning rates, iteration by iteration, as an uninterrupted
single-process run (the global batch, hence the iterations per epoch, does not change)."""

import pytest
import torch

import distengine.distributed as idist
from distengine.engine import Events, create_supervised_trainer
from distengine.handlers import (
    Checkpoint,
    CosineAnnealingScheduler,
    DiskSaver,
    create_lr_scheduler_with_warmup,
)

pytestmark = pytest.mark.timeout(120)


def _train(local_rank: int, ckpt_dir: str | None, stop_at: int | None) -> list[tuple[int, float]]:
    torch.manual_seed(0)
    model = idist.auto_model(torch.nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    trainer = create_supervised_trainer(model, opt, torch.nn.functional.mse_loss)
    scheduler = create_lr_scheduler_with_warmup(
        CosineAnnealingScheduler(opt, "lr", 0.2, 0.01, cycle_size=5),
        warmup_start_value=0.0,
        warmup_duration=3,
    )
    trainer.add_event_handler(Events.ITERATION_STARTED, scheduler)
    lrs: list[tuple[int, float]] = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: lrs.append((e.state.iteration, opt.param_groups[0]["lr"])),
    )
    to_save = {"trainer": trainer, "model": model, "optimizer": opt, "lr_scheduler": scheduler}
    if ckpt_dir is not None:
        checkpoint = Checkpoint(to_save, DiskSaver(ckpt_dir, require_empty=False), n_saved=1)
        trainer.add_event_handler(Events.ITERATION_COMPLETED(every=3), checkpoint)
        latest = Checkpoint.latest(ckpt_dir)
        if latest is not None:
            Checkpoint.load_objects(to_load=to_save, checkpoint=latest)
    if stop_at is not None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
    data = torch.utils.data.TensorDataset(torch.randn(24, 3), torch.randn(24, 1))
    loader = idist.auto_dataloader(data, batch_size=6)  # 4 iterations per epoch at any size
    trainer.run(loader, max_epochs=3, seed=3)
    return lrs


def test_schedule_resumes_exactly_at_another_world_size(tmp_path):
    reference = _train(0, None, None)
    assert len(reference) == 12
    run_dir = str(tmp_path / "run")
    first = idist.spawn(_train, 2, args=(run_dir, 7))
    # terminate() in iteration 7 takes effect after iteration 8 (the overlapped agreement)
    assert first[0] == first[1] == reference[:8]
    resumed = idist.spawn(_train, 3, args=(run_dir, None))  # from the checkpoint of iteration 6
    assert resumed[0] == resumed[1] == resumed[2] == reference[6:]
