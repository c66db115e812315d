"""A training job in which one rank stops arriving: it sleeps in an ITERATION_COMPLETED handler.

    python hanging_rank.py ITERATION RANK [SECONDS] [--allreduce-step]

Rank RANK sleeps SECONDS (default 600) in the handler ``slow_handler`` at iteration
ITERATION, so the other ranks wait for it in the engine's per-iteration agreement. Before
sleeping it prints ``HANG_AT=<time.time()>`` on stderr, so a test can measure how long
after that the job ended. With ``--allreduce-step`` the process function all-reduces a
tensor (as DDP's backward does), so the other ranks block in that collective of the next
iteration while the agreement they started is still pending. Run it under torchrun or as
plain ranks with ``DISTENGINE_HANG_TIMEOUT`` set.
"""

import sys
import time

import torch

import distengine.distributed as idist
from distengine.engine import Engine, Events


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--allreduce-step"]
    allreduce_step = "--allreduce-step" in sys.argv
    at, slow_rank = int(args[0]), int(args[1])
    seconds = float(args[2]) if len(args) > 2 else 600.0
    rank = idist.get_rank()

    def step(engine: Engine, batch: int) -> int:
        if allreduce_step:
            idist.all_reduce(torch.ones(4))
        return batch

    trainer = Engine(step)

    @trainer.on(Events.ITERATION_COMPLETED(once=at))
    def slow_handler(engine: Engine) -> None:
        if rank == slow_rank:
            print(f"HANG_AT={time.time()}", file=sys.stderr, flush=True)
            time.sleep(seconds)

    trainer.run(range(50), max_epochs=2, seed=0)
    print(f"rank {rank} finished at iteration {trainer.state.iteration}", flush=True)
    idist.finalize()


if __name__ == "__main__":
    main()
