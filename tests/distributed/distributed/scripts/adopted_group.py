"""A rank whose program creates the process group itself (env://), then uses idist.

    python adopted_group.py   # run as plain ranks with launcher variables

distengine must adopt that group (not create a second one) and leave it to its owner:
after ``idist.finalize()`` the group still exists. Prints ``OK rank world`` on success.
"""

import torch
import torch.distributed as dist

import distengine.distributed as idist


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = idist.get_rank(), idist.get_world_size()
    assert (rank, world) == (dist.get_rank(), dist.get_world_size())
    assert idist.backend() == "gloo"
    assert idist.all_reduce(rank + 1) == world * (world + 1) // 2
    assert idist.agree_flags(1 << rank) == (1 << world) - 1
    assert idist.all_gather(f"r{rank}") == [f"r{k}" for k in range(world)]
    idist.rendezvous_check("adopted/1", timeout=30)
    idist.finalize()
    assert dist.is_initialized(), "distengine destroyed a group it did not create"
    dist.all_reduce(torch.ones(1))
    dist.destroy_process_group()
    print(f"OK {rank} {world}", flush=True)


if __name__ == "__main__":
    main()
