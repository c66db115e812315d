"""A job whose rank R fails at iteration N while the other ranks wait in a collective.

Run it as plain ranks (tests/distributed/helpers.run_ranks) or under torchrun.

    python failing_rank.py raise [N [R]]   # rank R (default: the last) raises, uncaught
    python failing_rank.py stuck [N [R]]   # it reports the failure, then never ends by itself

Before failing, the failing rank prints ``FAILING_AT=<time.time()>`` on stderr, so a test can
measure how long after the failure each rank ended. A healthy run (no failure) is not a
mode: every rank but the failing one blocks in an all_reduce the failing rank never joins.
"""

import sys
import threading
import time
import traceback

import torch

import distengine.distributed as idist


def main() -> None:
    mode = sys.argv[1]
    fail_iter = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    rank, world = idist.get_rank(), idist.get_world_size()
    failing = int(sys.argv[3]) if len(sys.argv) > 3 else world - 1
    for it in range(fail_iter + 1):
        if rank == failing and it == fail_iter:
            print(f"FAILING_AT={time.time()}", file=sys.stderr, flush=True)
            exc = ValueError(f"injected failure on rank {rank} at iteration {it}")
            if mode == "raise":
                raise exc
            try:
                raise exc
            except ValueError as e:
                idist.notify_failure(e)
                traceback.print_exc()
                threading.Event().wait()  # a rank whose teardown never ends
        total = idist.all_reduce(torch.ones(1))
        assert total.item() == world, total


if __name__ == "__main__":
    main()
