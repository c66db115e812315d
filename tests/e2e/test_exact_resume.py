"""Exact resume across process restarts (docs/contracts.md, contracts 7 and 8), end to end.

A small job (tests/e2e/scripts/train_job.py: 96 samples, global batch 12 -> 8 iterations
per epoch, 3 epochs, a checkpoint every 3 iterations, dropout and random augmentation)
runs under torchrun on 2 gloo ranks. Faults are injected at fixed iterations; the job
resumes from ``Checkpoint.latest`` and its final model and optimizer must be bitwise equal
to an uninterrupted run's, with each rank reading, after the checkpoint, exactly the
samples the uninterrupted run read. Sample indices are recorded in ``__getitem__``.
Random fault points belong to benchmarks/soak_resume.py.
"""

from __future__ import annotations

import collections
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from launching import REPO, Launch, free_port

JOB = REPO / "tests" / "e2e" / "scripts" / "train_job.py"
ITERS_PER_EPOCH, TOTAL, CKPT_EVERY, GLOBAL_BATCH = 8, 24, 3, 12

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _torchrun(
    nproc: int, restarts: int, out: Path, *job_args: str, node: tuple[int, int] | None = None
) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={restarts}",
    ]
    if node is None:
        args.append("--standalone")
    else:
        node_rank, port = node
        args += [
            "--nnodes=2",
            f"--node-rank={node_rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            "--rdzv-id=e2e",
            "--monitor-interval=0.5",
        ]
        if node_rank == 0:
            args += ["--rdzv-conf=is_host=1"]
        else:
            args += ["--rdzv-conf=is_host=0"]
    return [*args, str(JOB), "--out", str(out), *job_args]


def _run(
    launch, out: Path, *job_args: str, nproc: int = 2, restarts: int = 0, name: str = "job"
) -> Launch:
    out.mkdir(parents=True, exist_ok=True)
    job = launch(_torchrun(nproc, restarts, out, *job_args), name=name)
    job.wait()
    return job


def _reads(out: Path, rank: int, attempt: int, world: int = 2) -> list[int]:
    path = out / f"reads_rank{rank}_attempt{attempt}_ws{world}.log"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _info(out: Path, rank: int, attempt: int, world: int = 2) -> dict:
    return json.loads((out / f"info_rank{rank}_attempt{attempt}_ws{world}.json").read_text())


def _final(out: Path) -> dict:
    return torch.load(out / "final.pt", weights_only=True)


def _bitwise_equal(a: dict, b: dict) -> bool:
    ma, mb = a["model"], b["model"]
    if ma.keys() != mb.keys() or not all(torch.equal(ma[k], mb[k]) for k in ma):
        return False
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    return sa.keys() == sb.keys() and all(
        torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])) for i in sa for k in sa[i]
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs: with dropout (same world size) and without (world-size changes),
    side by side."""
    from launching import _LAUNCHER_VARS  # noqa: F401  (same environment rules as `launch`)

    refs = {}
    base = tmp_path_factory.mktemp("reference")
    jobs = []
    try:
        for name, extra in (("dropout", ()), ("plain", ("--dropout", "0"))):
            out = base / name
            out.mkdir()
            jobs.append(_start(base, name, _torchrun(2, 0, out, *extra)))
            refs[name] = out
        for job in jobs:
            assert job.wait() == 0, job.output()[-3000:]
    finally:
        for job in jobs:
            job.kill()
    return refs


def _start(base: Path, name: str, args: list[str]) -> Launch:
    import os

    from launching import _LAUNCHER_VARS

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _LAUNCHER_VARS and not k.startswith(("TORCHELASTIC_", "PET_"))
    }
    env["OMP_NUM_THREADS"] = "1"
    return Launch(args, env, base / f"{name}.log")


# (SIGKILL of rank 1 at iteration 10 without workers: test_two_node_job_resumes_exactly, the
# same kill with the two ranks on two torchrun agents)
@pytest.mark.parametrize(
    "workers,kill_rank,kill_at",
    [(2, 0, 13)],
    ids=["2-workers-kill-rank0-it13"],
)
def test_sigkill_mid_epoch_resumes_bitwise(
    launch, tmp_path, reference, workers, kill_rank, kill_at
):
    out = tmp_path / "run"
    job = _run(
        launch,
        out,
        "--workers",
        str(workers),
        "--kill-rank",
        str(kill_rank),
        "--kill-at",
        str(kill_at),
        restarts=1,
    )
    assert job.proc.returncode == 0, job.output()[-3000:]
    assert (out / "fault_fired").read_text() == str(kill_at)  # the fault fired
    info = _info(out, 0, attempt=1)  # a restart happened, and it resumed from a checkpoint
    ckpt_iter = kill_at - kill_at % CKPT_EVERY
    assert info["resumed_iteration"] == ckpt_iter
    assert 0 < info["pass_batches"] < ITERS_PER_EPOCH  # mid-pass
    assert info["cursor"] == info["pass_batches"] * GLOBAL_BATCH
    ref = reference["dropout"]
    assert _bitwise_equal(_final(out), _final(ref))
    per_rank = GLOBAL_BATCH // 2
    for rank in range(2):
        expected = _reads(ref, rank, 0)[ckpt_iter * per_rank :]
        got = _reads(out, rank, 1)
        if workers == 0:
            assert got == expected
        else:  # workers interleave their reads: compare as multisets
            assert collections.Counter(got) == collections.Counter(expected)


def test_negative_control_without_cursor_and_rng_restore_differs(launch, tmp_path, reference):
    """Restoring only what Ignite restores (weights, iteration) must fail the comparison."""
    out = tmp_path / "run"
    job = _run(
        launch, out, "--kill-rank", "1", "--kill-at", "10", "--restore", "ignite", restarts=1
    )
    assert job.proc.returncode == 0, job.output()[-3000:]
    assert (out / "fault_fired").exists() and _info(out, 0, 1)["resumed_iteration"] == 9
    ref = reference["dropout"]
    assert not _bitwise_equal(_final(out), _final(ref))
    assert _reads(out, 0, 1) != _reads(ref, 0, 0)[9 * 6 :]


def _global_batches(out: Path, world: int, start: int, count: int) -> list[list[int]]:
    """Global batches ``start .. start+count-1`` of one launch's reads at ``world`` ranks."""
    b = GLOBAL_BATCH // world
    return [
        sum((_reads(out, r, 0, world)[j * b : (j + 1) * b] for r in range(world)), [])
        for j in range(start, start + count)
    ]


def test_changed_world_size_same_global_batches(launch, tmp_path, reference):
    """One chain, 3 ranks -> 2 -> 3: each launch stops at a checkpoint mid-pass and the next
    resumes it at the other world size. After each change: the same global batches in the
    same order as the uninterrupted run, every sample of the interrupted pass once; at the
    end, the uninterrupted run's weights (to float tolerance: the reduction order changed)."""
    ref_batches = _global_batches(reference["plain"], 2, 0, TOTAL)
    out = tmp_path / "run"
    job = _run(launch, out, "--dropout", "0", "--stop-at", "9", nproc=3, name="ws3")
    assert job.proc.returncode == 0, job.output()[-3000:]
    job = _run(launch, out, "--dropout", "0", "--stop-at", "18", nproc=2, name="ws2")
    assert job.proc.returncode == 0, job.output()[-3000:]
    # the last launch reads into a directory of its own (the first one's logs are ws3 too)
    last = tmp_path / "run_last"
    last.mkdir()
    shutil.copytree(out / "ckpt", last / "ckpt")
    job = _run(launch, last, "--dropout", "0", nproc=3, name="ws3_again")
    assert job.proc.returncode == 0, job.output()[-3000:]

    # 3 -> 2 at iteration 9, one batch into the second pass (iterations 9..16)
    info = _info(out, 0, 0, world=2)
    assert info["resumed_iteration"] == 9 and info["pass_batches"] == 1
    assert _global_batches(out, 2, 0, 9) == ref_batches[9:18]
    before, after = _global_batches(out, 3, 8, 1), _global_batches(out, 2, 0, 7)
    assert sorted(sum(before + after, [])) == list(range(96))
    # 2 -> 3 at iteration 18, two batches into the third pass (iterations 17..24)
    info = _info(last, 0, 0, world=3)
    assert info["resumed_iteration"] == 18 and info["pass_batches"] == 2
    assert _global_batches(last, 3, 0, TOTAL - 18) == ref_batches[18:]
    before, after = _global_batches(out, 2, 7, 2), _global_batches(last, 3, 0, 6)
    assert sorted(sum(before + after, [])) == list(range(96))
    got, exp = _final(last)["model"], _final(reference["plain"])["model"]
    for k in exp:
        assert torch.allclose(got[k], exp[k], rtol=1e-4, atol=1e-5), k


def test_two_node_job_resumes_exactly(launch, tmp_path, reference):
    out = tmp_path / "run"
    out.mkdir()
    port = free_port()
    common = ("--kill-rank", "1", "--kill-at", "10")
    nodes = [
        launch(_torchrun(1, 1, out, *common, node=(i, port)), name=f"node{i}") for i in range(2)
    ]
    for node in nodes:
        assert node.wait() == 0, node.output()[-3000:]
    assert (out / "fault_fired").exists()
    assert _info(out, 1, attempt=1)["resumed_iteration"] == 9
    assert _bitwise_equal(_final(out), _final(reference["dropout"]))


def test_exception_on_one_rank_restarts_from_last_complete_checkpoint(launch, tmp_path, reference):
    """Rank 1 raises at iteration 14 while rank 0's save of iteration 12 was killed before
    its manifest: the restarted job must resume from 9, never from the partial 12."""
    out = tmp_path / "run"
    job = _run(launch, out, "--write-fault", "before_manifest:4:kill", restarts=1)
    assert job.proc.returncode == 0, job.output()[-3000:]
    info = _info(out, 0, attempt=1)
    assert info["resumed_iteration"] == 9, info
    assert _bitwise_equal(_final(out), _final(reference["dropout"]))


def test_exception_with_restarts_resumes(launch, tmp_path, reference):
    """An exception on one rank ends the attempt with its traceback in the job's output;
    torchrun restarts it and the job resumes exactly. (That a torchrun job whose rank raises
    exits non-zero without restarts is tests/distributed/distributed/test_runtime_failures.py.)"""
    out = tmp_path / "run"
    job = _run(launch, out, "--raise-at", "14", "--fault-rank", "1", restarts=1)
    assert job.proc.returncode == 0, job.output()[-3000:]
    assert "injected failure on rank 1 at iteration 14" in job.output()
    assert _info(out, 1, attempt=1)["resumed_iteration"] == 12
    assert _bitwise_equal(_final(out), _final(reference["dropout"]))


def test_preemption_signal_on_one_rank_checkpoints_and_relaunch_resumes(
    launch, tmp_path, reference
):
    out = tmp_path / "run"
    job = _run(launch, out, "--signal-at", "11", "--fault-rank", "1", restarts=0, name="preempted")
    log = job.output()
    assert job.proc.returncode != 0
    assert log.count("exitcode  : 75") + log.count("exitcode: 75") >= 1, log[-3000:]
    ckpts = sorted(p.name for p in (out / "ckpt").glob("*.manifest.json"))
    # the signal arrived in iteration 11 (not the last of its epoch): all ranks stopped after
    # iteration 12 (the overlapped agreement)
    assert "checkpoint_12.pt.manifest.json" in ckpts, ckpts
    job = _run(launch, out, name="relaunch")
    assert job.proc.returncode == 0, job.output()[-3000:]
    assert _info(out, 0, 0)["resumed_iteration"] == 12
    assert _bitwise_equal(_final(out), _final(reference["dropout"]))
