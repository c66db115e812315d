"""The distributed runtime on real processes (gloo over loopback): queries, collectives,
agreement, and spawn's error reporting. Failure propagation and clean exit are in
test_runtime_failures.py and test_runtime_exit.py."""

import math
import re
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import run_ranks

import distengine.distributed as idist

pytestmark = pytest.mark.timeout(90)

SCRIPTS = Path(__file__).parent / "scripts"


def _ordered_log(path: Path, rank: int, first: int, local: bool) -> None:
    with idist.one_rank_first(rank=first, local=local):
        with open(path, "a") as f:
            f.write(f"{rank} enter\n")
            f.flush()
            f.write(f"{rank} exit\n")
    idist.barrier()


def _check_runtime(local_rank: int, world: int, tmp: str) -> dict:
    r = idist.get_rank()
    assert (r, idist.get_world_size()) == (local_rank, world)
    assert (idist.get_local_rank(), idist.get_nnodes()) == (local_rank, 1)
    assert idist.backend() == "gloo" and idist.device() == torch.device("cpu")
    assert idist.is_main_process() == (r == 0)
    # initialize() passed init_process_group a store, so torch.distributed.nn (imported
    # first) captured no group in its defaults: the group can be destroyed at finalize.
    import torch.distributed.nn.functional as dnn

    assert not any(isinstance(d, dist.ProcessGroup) for d in dnn.all_reduce.__defaults__)

    # all_reduce: every op, tensors in place, numbers keep their type
    assert idist.all_reduce(r + 1) == world * (world + 1) // 2
    assert idist.all_reduce(r + 0.5, op="max") == world - 0.5
    assert idist.all_reduce(r + 2, op="min") == 2
    assert idist.all_reduce(r + 1, op="prod") == math.factorial(world)
    t = torch.full((2,), float(r))
    assert idist.all_reduce(t) is t and t.tolist() == [float(sum(range(world)))] * 2

    # all_gather: uneven first dims, same shapes, 0-d, objects
    ragged = idist.all_gather(torch.arange(r + 1) + 10 * r)
    assert ragged.tolist() == [10 * k + i for k in range(world) for i in range(k + 1)]
    same = idist.all_gather(torch.tensor([[r, -r]]), same_shape=True)
    assert same.tolist() == [[k, -k] for k in range(world)]
    assert idist.all_gather(torch.tensor(float(r))).tolist() == [float(k) for k in range(world)]
    assert idist.all_gather({"rank": r}) == [{"rank": k} for k in range(world)]
    assert idist.all_gather(f"r{r}") == [f"r{k}" for k in range(world)]
    assert idist.all_gather(r * 1.5) == [k * 1.5 for k in range(world)]
    with pytest.raises(
        ValueError, match=r"differ at most in their first dimension.*rank \d has shape \(1, \d\)"
    ):
        idist.all_gather(torch.zeros(1, r + 1))

    # broadcast: tensors in place from a non-zero rank, objects
    b = torch.tensor([float(r)])
    assert idist.broadcast(b, src=world - 1) is b and b.item() == world - 1
    assert idist.broadcast({"from": r}, src=1) == {"from": 1}

    # one_rank_first: the first rank's whole block runs before any other rank enters
    for first in (0, world - 1):
        log = Path(tmp) / f"first{first}.log"
        _ordered_log(log, r, first, local=False)
        lines = log.read_text().split()
        assert lines[:4] == [str(first), "enter", str(first), "exit"], lines
        assert len(lines) == 4 * world
    log = Path(tmp) / "local.log"
    _ordered_log(log, r, 0, local=True)
    assert log.read_text().split()[:4] == ["0", "enter", "0", "exit"]

    # agree_flags: a request made on the last rank reaches every rank
    assert idist.agree_flags(4 if r == world - 1 else 0) == 4
    assert idist.agree_flags(1 << r) == (1 << world) - 1
    assert idist.agree_flags(0) == 0
    # start_agreement: the same OR, read later; several may be pending, each keeps its own
    first = idist.start_agreement(1 << r)
    second = idist.start_agreement(8 if r == world - 1 else 0)
    assert idist.agree_flags(16 if r == 0 else 0) == 16  # a blocking one in between
    assert second.wait() == 8 and first.wait() == (1 << world) - 1
    assert first.wait() == (1 << world) - 1 and first.is_completed()  # read again: same
    assert idist.start_agreement(0).wait() == 0

    # check_in_sync: names the first rank that differs from rank 0, the field, both values
    idist.check_in_sync((1, 5), ("epoch", "iteration"))
    diverged = (1, 5 if r == 0 else 100 + r)
    with pytest.raises(RuntimeError, match=r"rank 1 has iteration=101 but rank 0 has iteration=5"):
        idist.check_in_sync(diverged, ("epoch", "iteration"))
    with pytest.raises(
        RuntimeError, match=f"rank {world - 1} has digest={2**70} but rank 0 has digest=7"
    ):
        idist.check_in_sync((1, 2**70 if r == world - 1 else 7), ("epoch", "digest"))

    # rendezvous_check: all arrive; a check reached by rank 0 alone fails in bounded time
    idist.rendezvous_check("test/all", timeout=30)
    if r == 0:
        with pytest.raises(
            TimeoutError, match=r"only 1 of \d ranks reached 'test/lonely'.*rank 1 is at 'test/all'"
        ):
            idist.rendezvous_check("test/lonely", timeout=0.5)
    idist.barrier()
    return {"rank": r, "world": idist.get_world_size()}


@pytest.mark.parametrize("world", [2, 3])
def test_runtime_on_real_ranks(world, tmp_path):
    if world == 2:
        results = idist.spawn(_check_runtime, world, args=(world, str(tmp_path)))
    else:  # the same through Ignite's launcher, which spawns without a launcher
        with idist.Parallel(backend="gloo", nproc_per_node=world) as parallel:
            results = parallel.run(_check_runtime, world, str(tmp_path))
    assert results == [{"rank": r, "world": world} for r in range(world)]


def test_adopts_a_group_the_user_created():
    results = run_ranks([str(SCRIPTS / "adopted_group.py")], 2, timeout=60)
    for r in results:
        assert not r.timed_out and r.returncode == 0, r.stderr
        assert r.stdout.split() == ["OK", str(r.rank), "2"]


def _check_nccl(local_rank: int, world: int) -> str:
    r = idist.get_rank()
    assert idist.backend() == "nccl" and idist.device() == torch.device("cuda", local_rank)
    on_cpu = torch.full((2,), float(r + 1))
    assert idist.all_reduce(on_cpu) is on_cpu and on_cpu.device.type == "cpu"
    assert on_cpu.tolist() == [world * (world + 1) / 2] * 2
    ragged = idist.all_gather(torch.arange(r + 1, device=idist.device()))
    assert ragged.device.type == "cuda" and ragged.numel() == world * (world + 1) // 2
    assert idist.all_gather({"r": r}) == [{"r": k} for k in range(world)]
    assert idist.broadcast(torch.tensor([float(r)]), src=world - 1).item() == world - 1
    assert idist.agree_flags(1 << r) == (1 << world) - 1
    model = idist.auto_model(torch.nn.Linear(4, 2))
    assert next(model.parameters()).device == idist.device()
    model(torch.ones(3, 4, device=idist.device())).sum().backward()
    return str(idist.device())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for NCCL")
def test_nccl_ranks():
    world = min(2, torch.cuda.device_count())  # NCCL needs one GPU per rank
    assert idist.spawn(_check_nccl, world, backend="nccl", args=(world,)) == [
        f"cuda:{r}" for r in range(world)
    ]


def _fail_on_last_rank(local_rank: int, mode: str) -> None:
    world = idist.get_world_size()
    for _ in range(3):
        idist.all_reduce(torch.ones(1))
    if local_rank == world - 1:
        try:
            raise ValueError(f"injected failure FAILING_AT={time.time()!r}")
        except ValueError as exc:
            if mode == "raise":
                raise
            idist.notify_failure(exc)  # "stuck": reported, then never ends by itself
            threading.Event().wait()
    idist.all_reduce(torch.ones(1))  # the failing rank never joins this one


@pytest.mark.parametrize(("mode", "world"), [("raise", 2), ("stuck", 3)])
def test_spawn_reraises_the_failing_rank_and_ends_all(mode, world):
    failure_timeout = 2.0
    with pytest.raises(mp.ProcessRaisedException) as info:
        idist.spawn(_fail_on_last_rank, world, args=(mode,), failure_timeout=failure_timeout)
    ended = time.time()
    text = str(info.value)
    # The rank that failed first, even when a peer ended by the watchdog exited before it.
    assert info.value.error_index == world - 1
    assert f"-- Process {world - 1} terminated with the following error" in text
    assert "_fail_on_last_rank" in text and "ValueError: injected failure" in text
    failed_at = float(re.search(r"FAILING_AT=([\d.]+)", text).group(1))
    elapsed = ended - failed_at
    print(f"spawn/{mode}/{world} ranks: all ended {elapsed:.2f} s after the failure")
    assert elapsed < failure_timeout + 3.0
