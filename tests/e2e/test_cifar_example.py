"""The CIFAR-10 example on 2 gloo ranks: killed mid-run, restarted by torchrun, resumed from
its latest checkpoint — its final metrics equal an uninterrupted run's."""

from __future__ import annotations

import json

import pytest
from launching import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ARGS = [
    "--epochs",
    "2",
    "--synthetic-size",
    "256",
    "--batch-size",
    "32",
    "--checkpoint-every",
    "3",
    "--no-progress",
    "--width",
    "8",
]


def _final(output: str) -> dict:
    lines = [line for line in output.splitlines() if "[cifar10] FINAL " in line]
    assert lines, output[-3000:]
    return json.loads(lines[-1].split("[cifar10] FINAL ", 1)[1])


def test_example_killed_and_resumed_matches_uninterrupted(launch, tmp_path):
    cpu = str(REPO / "launchers" / "cpu.sh")
    main = str(REPO / "examples" / "cifar10" / "main.py")
    # the uninterrupted and the killed run are independent: side by side
    ref = launch(["bash", cpu, "2", main, *ARGS, "--output-dir", str(tmp_path / "ref")], name="ref")
    job = launch(
        [
            "bash",
            cpu,
            "2",
            main,
            *ARGS,
            "--output-dir",
            str(tmp_path / "run"),
            "--kill-at-iteration",
            "11",
        ],
        name="killed",
        MAX_RESTARTS="1",
    )
    assert ref.wait() == 0, ref.output()[-3000:]
    reference = _final(ref.output())
    assert reference["iteration"] == 16 and not reference["resumed"]
    assert job.wait() == 0, job.output()[-3000:]
    out = job.output()
    assert "resumed from" in out and "train_checkpoint_9.pt" in out  # restarted from iteration 9
    final = _final(out)
    assert final["resumed"] and final["iteration"] == 16
    # the last epoch ran partly before and partly after the kill: its metrics are exact
    assert final["history"][-1] == reference["history"][-1]
    assert (tmp_path / "run" / "metrics.csv").exists()
