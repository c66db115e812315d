"""One rank started without a launcher; it meets the others through ``initialize(init_method=...)``.

Environment: INIT_METHOD (the URL), HOW ("args": rank and world size as arguments, "env":
from RANK/WORLD_SIZE), ARG_RANK, ARG_WORLD. Prints ``OK rank world init_method``.
"""

import gc
import os
import weakref

import torch
import torch.distributed as dist

import distengine.distributed as idist


def main() -> None:
    url = os.environ["INIT_METHOD"]
    rank, world = int(os.environ["ARG_RANK"]), int(os.environ["ARG_WORLD"])
    if os.environ["HOW"] == "args":
        idist.initialize("gloo", init_method=url, rank=rank, world_size=world, timeout=60)
    else:
        idist.initialize("gloo", init_method=url, timeout=60)
    assert (idist.get_rank(), idist.get_world_size()) == (rank, world)
    assert (idist.get_local_rank(), idist.get_nproc_per_node()) == (rank, world)
    assert idist.backend() == "gloo" and idist.model_name() == "native-dist"
    assert idist.all_reduce(torch.tensor([rank + 1])).item() == world * (world + 1) // 2
    assert idist.all_gather(f"r{rank}") == [f"r{k}" for k in range(world)]
    assert idist.agree_flags(1 << rank) == (1 << world) - 1
    idist.rendezvous_check("init_method/1", timeout=30)  # distengine's keys live in that store
    if world > 1:  # a sub-group made from a rank list, released with the rest
        assert idist.all_reduce(torch.ones(1), group=[0, 1]).item() == (2.0 if rank < 2 else 1.0)
    world_group = weakref.ref(dist.GroupMember.WORLD)
    idist.finalize()
    assert idist.get_world_size() == 1
    gc.collect()
    # Nothing of distengine's keeps the group alive (gloo's threads would abort the exit).
    assert world_group() is None, "the process group outlives finalize()"
    print(f"OK {rank} {world} {url}", flush=True)


if __name__ == "__main__":
    main()
