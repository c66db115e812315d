"""Resuming over a plain ``DataLoader`` (not ``auto_dataloader``) from a checkpoint written
at the end of a pass (Ignite's mnist_save_resume_engine example: ``EPOCH_COMPLETED``)."""

import warnings

import torch

from distengine.engine import Engine, Events
from distengine.handlers import Checkpoint, DiskSaver

N, BATCH = 24, 4  # 6 batches per pass


class Recorded(torch.utils.data.Dataset):
    def __init__(self):
        self.fetched = []

    def __len__(self):
        return N

    def __getitem__(self, i):
        self.fetched.append(i)
        return i


def _run(tmp_path, crash_at=None, resume=None):
    torch.manual_seed(75)
    data = Recorded()
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=True)
    seen = []

    def step(engine, batch):
        noise = torch.rand(1).item()  # the step draws from the global RNG (e.g. dropout)
        seen.append((engine.state.iteration, batch.tolist(), noise))

    trainer = Engine(step)
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED,
        Checkpoint({"trainer": trainer}, DiskSaver(tmp_path, require_empty=False), n_saved=None),
    )
    if crash_at is not None:

        @trainer.on(Events.ITERATION_COMPLETED(once=crash_at))
        def crash(engine):
            raise RuntimeError("crash")

    if resume is not None:
        Checkpoint.load_objects({"trainer": trainer}, resume)
    torch.manual_seed(15)  # as the example does before run: the loaded RNG state wins
    try:
        trainer.run(loader, max_epochs=3)
    except RuntimeError:
        pass
    return seen, data.fetched


def test_resume_at_the_end_of_a_pass_fetches_nothing_of_it_and_continues_exactly(tmp_path):
    full, _ = _run(tmp_path / "full")
    _run(tmp_path / "crash", crash_at=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "fetching and dropping" warning
        resumed, fetched = _run(tmp_path / "resume", resume=tmp_path / "crash" / "trainer_6.pt")
    assert [s[0] for s in resumed] == list(range(7, 19))
    assert resumed == full[6:]  # same batches, same random numbers
    assert len(fetched) == 2 * N  # passes 1 and 2 only: nothing of the finished pass 0
