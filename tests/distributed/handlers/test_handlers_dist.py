"""Handlers on 2 gloo ranks: only the main process draws and writes, TerminateOnNan on
rank 1 stops both ranks at the same iteration, throughput sums the ranks' samples.

One spawned job covers all of it (a launch costs seconds on this machine). Each rank
returns what it saw (``idist.spawn`` hands back the return values by rank) and leaves its
bar, CSV and TensorBoard output in files named by rank; the assertions run in the test
process.
"""

import math
import os

import pytest
import torch

import distengine.distributed as idist
from distengine.engine import Engine, Events
from distengine.handlers.csv_logger import CSVLogger
from distengine.handlers.progress import ProgressBar
from distengine.handlers.tensorboard_logger import TensorBoardLogger
from distengine.handlers.terminate_on_nan import TerminateOnNan
from distengine.handlers.throughput import ThroughputLogger

NAN_RANK, NAN_ITERATION, EPOCH_LENGTH = 1, 3, 2
# the request of iteration 3 takes effect on every rank after the next one (the overlapped
# agreement; iteration 3 is not the last of its epoch)
STOP_ITERATION = NAN_ITERATION + 1


class _Clock:
    """Advances one second per iteration of the process function (same on both ranks)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _job(local_rank, out_dir):
    rank, world_size = idist.get_rank(), idist.get_world_size()
    clock = _Clock()
    batch_rows = rank + 2  # rank 0 gets 2 samples per batch, rank 1 gets 3

    def step(engine, batch):
        clock.now += 1.0
        if rank == NAN_RANK and engine.state.iteration == NAN_ITERATION:
            return torch.tensor(math.nan)
        return batch.sum()

    trainer = Engine(step)
    tp = ThroughputLogger(clock=clock).attach(trainer)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan())
    with open(os.path.join(out_dir, f"pbar_rank{rank}.txt"), "w") as bar_file:
        pbar = ProgressBar(persist=True, file=bar_file, mininterval=0)
        pbar.attach(trainer, output_transform=lambda loss: {"loss": loss})
        csv_logger = CSVLogger(os.path.join(out_dir, f"log_rank{rank}.csv"))
        tb_logger = TensorBoardLogger(os.path.join(out_dir, f"tb_rank{rank}"))
        for logger in (csv_logger, tb_logger):
            logger.attach_output_handler(
                trainer, Events.ITERATION_COMPLETED, tag="train", output_transform=lambda x: x
            )
        trainer.add_event_handler(Events.COMPLETED, lambda e: pbar.log_message(f"done on {rank}"))
        data = [torch.ones(batch_rows, 2) for _ in range(EPOCH_LENGTH)]
        trainer.run(data, max_epochs=3)
        csv_logger.close()
        tb_logger.close()
    return {
        "world_size": world_size,
        "iteration": trainer.state.iteration,
        "throughput": tp.value,
    }


@pytest.mark.timeout(90)
def test_handlers_on_two_ranks(tmp_path):
    out = str(tmp_path)
    results = idist.spawn(_job, 2, backend="gloo", args=(out,))
    assert [r["world_size"] for r in results] == [2, 2]

    # A NaN on rank 1 alone stopped both ranks after the same iteration.
    assert [r["iteration"] for r in results] == [STOP_ITERATION, STOP_ITERATION]

    # Throughput of epoch 1: both ranks' samples over the (fake) per-rank time.
    samples = sum((rank + 2) * EPOCH_LENGTH for rank in range(2))
    assert [r["throughput"] for r in results] == [samples / EPOCH_LENGTH] * 2

    # Only the main process draws and writes.
    with open(os.path.join(out, "pbar_rank0.txt")) as f:
        bar = f.read()
    assert f"[{EPOCH_LENGTH}/{EPOCH_LENGTH}]" in bar and "done on 0" in bar
    with open(os.path.join(out, "pbar_rank1.txt")) as f:
        assert f.read() == ""
    with open(os.path.join(out, "log_rank0.csv")) as f:
        assert len(f.read().splitlines()) == 1 + STOP_ITERATION  # header + one row per iteration
    assert os.listdir(os.path.join(out, "tb_rank0"))
    assert not os.path.exists(os.path.join(out, "log_rank1.csv"))
    assert not os.path.exists(os.path.join(out, "tb_rank1"))
