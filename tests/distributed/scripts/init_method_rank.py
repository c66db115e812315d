"""One rank started without a launcher; it meets the others through ``initialize(init_method=...)``.

Environment: INIT_METHOD (the URL), HOW ("args": rank and world size as arguments, "env":
from RANK/WORLD_SIZE), ARG_RANK, ARG_WORLD. Prints ``OK rank world init_method``.
"""

import os

import torch

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
    idist.finalize()
    assert idist.get_world_size() == 1
    print(f"OK {rank} {world} {url}", flush=True)


if __name__ == "__main__":
    main()
