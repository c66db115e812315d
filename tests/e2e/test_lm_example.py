"""The FSDP language-model example on 2 gloo ranks under launchers/cpu.sh: killed mid-run,
restarted by torchrun, resumed from its newest sharded checkpoint, trained to the end."""

from __future__ import annotations

import json

import pytest
from launching import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ARGS = [
    "--epochs",
    "2",
    "--sentences",
    "300",
    "--batch-size",
    "16",
    "--block-size",
    "32",
    "--d-model",
    "32",
    "--checkpoint-every",
    "5",
    "--no-progress",
]


def test_lm_example_killed_and_resumed(launch, tmp_path):
    cpu = str(REPO / "launchers" / "cpu.sh")
    main = str(REPO / "examples" / "lm_fsdp" / "main.py")
    out = tmp_path / "run"
    job = launch(
        ["bash", cpu, "2", main, *ARGS, "--output-dir", str(out), "--kill-at-iteration", "7"],
        name="killed",
        MAX_RESTARTS="1",
    )
    assert job.wait() == 0, job.output()[-3000:]
    log = job.output()
    assert "resumed from" in log and "checkpoint_5.pt at iteration 5 (world size 2)" in log
    lines = [line for line in log.splitlines() if "[lm] FINAL " in line]
    final = json.loads(lines[-1].split("[lm] FINAL ", 1)[1])
    assert (
        final["resumed"] and final["iteration"] == 2 * 23
    )  # 300 sentences: 368 windows, 23 batches of 16
    first, second = final["history"]
    assert second["valid_loss"] < first["valid_loss"]  # it learns
    shards = sorted(p.name for p in (out / "checkpoints").glob("checkpoint_46.pt*"))
    assert shards == [
        "checkpoint_46.pt",
        "checkpoint_46.pt.manifest.json",
        "checkpoint_46.pt.rank0.distcp",
        "checkpoint_46.pt.rank1.distcp",
    ]
