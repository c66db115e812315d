"""Exact resume of an FSDP job from sharded checkpoints, end to end.

tests/e2e/scripts/fsdp_job.py: 96 samples, global batch 12 -> 8 iterations per epoch, 3
epochs, a sharded checkpoint every 3 iterations; the model (two blocks, dropout) is sharded
with ``auto_model(sharding="fsdp")`` on 2 gloo ranks; the dataset augments and records what
it reads.

- SIGKILL of a rank mid-epoch under torchrun with a restart: the final sharded parameters
  and optimizer state, gathered whole, are bitwise equal to the uninterrupted run's.
- Saved at 2 ranks (no dropout: per-rank RNG streams cannot follow a change of world size),
  resumed at 1 and at 3: the state loaded equals the state saved, every sample of the
  interrupted pass is read exactly once, the final weights equal an uninterrupted run's to
  float tolerance.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from launching import REPO, Launch

JOB = REPO / "tests" / "e2e" / "scripts" / "fsdp_job.py"
ITERS_PER_EPOCH, GLOBAL_BATCH, N = 8, 12, 96

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _start(
    launch, out: Path, *job_args: str, nproc: int = 2, restarts: int = 0, name: str
) -> Launch:
    """Starts the job (``nproc=0``: one process, no launcher); :func:`_done` waits for it."""
    out.mkdir(parents=True, exist_ok=True)
    if nproc == 0:  # one process, no launcher
        args = [sys.executable, str(JOB)]
    else:
        args = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            f"--max-restarts={restarts}",
            str(JOB),
        ]
    return launch([*args, "--out", str(out), *job_args], name=name)


def _done(*jobs: Launch) -> None:
    for job in jobs:
        assert job.wait() == 0, job.output()[-3000:]


def _reads(out: Path, rank: int, world: int, attempt: int = 0) -> list[int]:
    path = out / f"reads_rank{rank}_attempt{attempt}_ws{world}.log"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _bitwise_equal(a: dict, b: dict) -> bool:
    ma, mb = a["model"], b["model"]
    if ma.keys() != mb.keys() or not all(torch.equal(ma[k], mb[k]) for k in ma):
        return False
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    return (
        sa.keys() == sb.keys()
        and all(
            torch.equal(torch.as_tensor(sa[p][k]), torch.as_tensor(sb[p][k]))
            for p in sa
            for k in sa[p]
        )
        and a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    )


def test_sigkill_mid_epoch_resumes_bitwise(launch, tmp_path):
    ref = tmp_path / "reference"
    out = tmp_path / "killed"
    # the uninterrupted and the killed run are independent: side by side
    _done(
        _start(launch, ref, name="reference"),
        _start(launch, out, "--kill-rank", "1", "--kill-at", "11", restarts=1, name="killed"),
    )
    assert (out / "fault_fired").read_text() == "11"
    import json

    info = json.loads((out / "info_rank0_attempt1_ws2.json").read_text())
    assert info["resumed_iteration"] == 9 and info["pass_batches"] == 1  # mid-epoch
    assert sorted(p.name for p in (out / "ckpt").glob("checkpoint_24.pt*")) == [
        "checkpoint_24.pt",
        "checkpoint_24.pt.manifest.json",
        "checkpoint_24.pt.rank0.distcp",
        "checkpoint_24.pt.rank1.distcp",
    ]
    assert _bitwise_equal(_load(out / "final.pt"), _load(ref / "final.pt"))
    # after the checkpoint, each rank read exactly what the uninterrupted run read
    per_rank = GLOBAL_BATCH // 2
    for rank in range(2):
        assert _reads(out, rank, 2, attempt=1) == _reads(ref, rank, 2)[9 * per_rank :]


def test_saved_at_2_resumes_at_1_and_3(launch, tmp_path):
    stop = 9  # a checkpoint iteration, one batch into the second pass
    first = tmp_path / "first"
    reference = tmp_path / "reference"
    _done(
        _start(
            launch,
            first,
            "--dropout",
            "0",
            "--stop-at",
            str(stop),
            "--dump-at",
            str(stop),
            name="first",
        ),
        # uninterrupted, alone; independent of the first run: side by side
        _start(launch, reference, "--dropout", "0", nproc=0, name="reference"),
    )
    saved = _load(first / f"saved_{stop}.pt")
    before = sum((_reads(first, r, 2)[8 * 6 : 9 * 6] for r in range(2)), [])
    resumed = []
    for world in (1, 3):  # each resumes from its own copy of the checkpoints: side by side
        out = tmp_path / f"ws{world}"
        shutil.copytree(first / "ckpt", out / "ckpt")
        nproc = 0 if world == 1 else world
        resumed.append(_start(launch, out, "--dropout", "0", nproc=nproc, name=f"ws{world}"))
    _done(*resumed)
    for world in (1, 3):
        out = tmp_path / f"ws{world}"
        # the state loaded at the new world size is the state saved at 2 ranks
        assert _bitwise_equal(_load(out / f"loaded_ws{world}.pt"), saved), world
        # every sample of the interrupted pass exactly once (non-padding; 12 divides by 1 and 3)
        per_rank = GLOBAL_BATCH // world
        after = sum(
            (_reads(out, r, world)[: (ITERS_PER_EPOCH - 1) * per_rank] for r in range(world)), []
        )
        assert sorted(before + after) == list(range(N)), world
        # the same global batches as the uninterrupted run, in the same order
        ref_reads = _reads(reference, 0, 1)
        for j in range(3 * ITERS_PER_EPOCH - stop):
            got = sorted(
                sum(
                    (
                        _reads(out, r, world)[j * per_rank : (j + 1) * per_rank]
                        for r in range(world)
                    ),
                    [],
                )
            )
            k = stop + j
            assert got == sorted(ref_reads[k * GLOBAL_BATCH : (k + 1) * GLOBAL_BATCH]), (world, k)
        # weights equal to float tolerance (the reduction order changed), not bitwise
        got, exp = _load(out / "final.pt")["model"], _load(reference / "final.pt")["model"]
        for k in exp:
            assert torch.allclose(got[k], exp[k], rtol=1e-4, atol=1e-5), (world, k)
