"""A program that creates and destroys process groups itself, as Ignite's test fixtures do.

Environment: ARG_RANK, ARG_WORLD, ARG_PORT, ARG_PORT2 (the stores of the first and the
second group; no launcher variables). distengine adopts each group, notices when it is
destroyed (a job of one again) and adopts the next one; ``set_local_rank`` sets the local
rank of an adopted group; ``sync`` re-adopts after ``finalize``. Prints ``OK rank``.
"""

import os
from datetime import timedelta

import torch
import torch.distributed as dist

import distengine.distributed as idist


def make_group(rank: int, world: int, port: int) -> None:
    store = dist.TCPStore(
        "127.0.0.1", port, world, is_master=rank == 0, timeout=timedelta(seconds=60)
    )
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)


def main() -> None:
    rank, world, port, port2 = (
        int(os.environ[k]) for k in ("ARG_RANK", "ARG_WORLD", "ARG_PORT", "ARG_PORT2")
    )
    make_group(rank, world, port)
    assert idist.get_world_size() == world and idist.model_name() == "native-dist"
    assert idist.all_reduce(rank + 1) == world * (world + 1) // 2
    assert idist.get_local_rank() == rank  # no LOCAL_RANK: one node assumed
    idist.set_local_rank(0)
    assert idist.get_local_rank() == 0
    dist.barrier()
    dist.destroy_process_group()
    assert idist.get_world_size() == 1 and idist.model_name() == "serial"  # noticed

    # A new group, with a store on another port: the first store's server may still accept
    # a connection until rank 0 has freed it, and then close it (1 run in 30 did).
    make_group(rank, world, port2)
    t = torch.tensor([float(rank)])
    assert idist.all_reduce(t).item() == sum(range(world)) and idist.get_world_size() == world
    idist.finalize()  # leaves the user's group alone, stops following it
    assert dist.is_initialized() and idist.get_world_size() == 1
    idist.sync()  # adopt it again
    assert idist.get_world_size() == world
    assert idist.all_gather(rank) == list(range(world))
    dist.barrier()
    dist.destroy_process_group()
    print(f"OK {rank}", flush=True)


if __name__ == "__main__":
    main()
