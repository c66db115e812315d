"""A ported Ignite DDP script (imports switched, nothing else) runs twice with identical
results (tests/e2e/scripts/ignite_ddp_port.py, torchrun, 2 gloo ranks).

The script seeds the way Ignite scripts do (``manual_seed(seed + rank)``) and calls
``trainer.run`` without ``seed=``: the run's seed then follows torch's seeding, so two
launches read the same samples in the same order on every rank (with random
augmentation, dropout and DataLoader workers) and end with bitwise-identical weights.
The negative control drops the ``manual_seed`` call: that launch then reads in another
order (that two unseeded launches differ from each other is
tests/unit/engine/test_engine_run.py). The three launches run side by side.
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


def _launch_all(launch, tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two launches with ``manual_seed`` and one without, side by side."""
    runs = [
        (tmp_path / "seeded0", ()),
        (tmp_path / "seeded1", ()),
        (tmp_path / "unseeded", ("--no-manual-seed",)),
    ]
    jobs = [_start(launch, out, *args) for out, args in runs]
    for job in jobs:
        assert job.wait() == 0, job.output()[-4000:]
    return tuple(out for out, _ in runs)


def _reads(out: Path) -> list[list[int]]:
    return [
        [int(x) for x in (out / f"reads_rank{rank}.log").read_text().split()] for rank in range(2)
    ]


def test_a_ported_ignite_script_runs_twice_with_identical_results(launch, tmp_path):
    first, second, unseeded = _launch_all(launch, tmp_path)

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
    # negative control: without manual_seed the same script reads in another order
    reads_unseeded = _reads(unseeded)
    assert set(reads_unseeded[0] + reads_unseeded[1]) == set(range(SAMPLES))
    for rank in range(2):
        assert reads_unseeded[rank] != reads[rank]
