"""A training job in which one rank stops arriving: it sleeps in an ITERATION_COMPLETED handler.

    python hanging_rank.py ITERATION RANK [SECONDS]

Rank RANK sleeps SECONDS (default 600) in the handler ``slow_handler`` at iteration
ITERATION, so the other ranks wait for it in the engine's per-iteration agreement. Before
sleeping it prints ``HANG_AT=<time.time()>`` on stderr, so a test can measure how long
after that the job ended. Run it under torchrun or as plain ranks with
``DISTENGINE_HANG_TIMEOUT`` set.
"""

import sys
import time

import distengine.distributed as idist
from distengine.engine import Engine, Events


def main() -> None:
    at, slow_rank = int(sys.argv[1]), int(sys.argv[2])
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 600.0
    rank = idist.get_rank()
    trainer = Engine(lambda engine, batch: batch)

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
