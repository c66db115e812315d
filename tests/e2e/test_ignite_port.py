"""A ported Ignite DDP script (imports switched, nothing else) runs twice with identical
results (tests/e2e/scripts/ignite_ddp_port.py, torchrun, 2 gloo ranks).

The script seeds the way Ignite scripts do (``manual_seed(seed + rank)``) and calls
``trainer.run`` without ``seed=``: the run's seed then follows torch's seeding, so two
launches read the same samples in the same order on every rank (with random
augmentation, dropout and DataLoader workers) and end with bitwise-identical weights.
The negative control drops the ``manual_seed`` call: two launches then read in different
orders. The two launches of each pair run side by side to keep the test short.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from launching import REPO, Launch

SCRIPT = REPO / "tests" / "e2e" / "scripts" / "ignite_ddp_port.py"
SAMPLES = 200  # the script's training set (global batch 32: the last batch is irregular)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _start(launch, out: Path, *args: str) -> Launch:
    out.mkdir(parents=True)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(SCRIPT),
        "--out",
        str(out),
        *args,
    ]
    return launch(cmd, name=out.name)


def _launch_pair(launch, tmp_path: Path, tag: str, *args: str) -> list[Path]:
    outs = [tmp_path / f"{tag}{i}" for i in range(2)]
    jobs = [_start(launch, out, *args) for out in outs]
    for job in jobs:
        assert job.wait() == 0, job.output()[-4000:]
    return outs


def _reads(out: Path) -> list[list[int]]:
    return [
        [int(x) for x in (out / f"reads_rank{rank}.log").read_text().split()] for rank in range(2)
    ]


def test_a_ported_ignite_script_runs_twice_with_identical_results(launch, tmp_path):
    first, second = _launch_pair(launch, tmp_path, "seeded")

    reads = _reads(first)
    assert set(reads[0] + reads[1]) == set(range(SAMPLES))  # every sample was read
    assert reads == _reads(second)  # same samples, same order, on each rank

    a = torch.load(first / "final.pt", weights_only=True)
    b = torch.load(second / "final.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise
    metrics = json.loads((first / "metrics.json").read_text())
    assert metrics == json.loads((second / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.7  # it did train


def test_without_manual_seed_two_launches_read_in_different_orders(launch, tmp_path):
    first, second = _launch_pair(launch, tmp_path, "unseeded", "--no-manual-seed")
    reads_first, reads_second = _reads(first), _reads(second)
    for reads in (reads_first, reads_second):
        assert set(reads[0] + reads[1]) == set(range(SAMPLES))
    for rank in range(2):
        assert reads_first[rank] != reads_second[rank]
