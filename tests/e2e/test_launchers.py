"""The launchers in ``launchers/`` run for real, on this machine, with gloo over loopback.

Each test starts the launcher as a subprocess in its own session, with a bounded timeout;
on failure or timeout the whole process tree (torchrun agents, workers started in their
own sessions, their children) is killed by pid. SLURM is not installed here: the SLURM
tests put small stand-ins for ``srun``, ``scancel`` and ``scontrol`` first on ``PATH`` and
run ``slurm.sbatch`` with bash, which exercises the batch script's signal forwarding and
requeue decision and ``slurm_node.sh``/``record_exit.sh`` for real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from launching import LAUNCH_TIMEOUT, REPO, Launch, free_port

LAUNCHERS = REPO / "launchers"
PROBE = REPO / "tests" / "e2e" / "scripts" / "launch_probe.py"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

_FAKE_SRUN = """#!/usr/bin/env bash
# Stand-in for srun on one node: runs the task in its own process group (job control) and
# records that group, which the stand-in scancel signals as slurmstepd signals a step.
set -m
while [[ "${1:-}" == --* ]]; do shift; done
SLURM_NODEID=0 SLURM_PROCID=0 SLURM_LOCALID=0 "$@" &
task=$!
echo "$task" > "$FAKE_SLURM_DIR/step.pgid"
wait "$task"
"""

_FAKE_SCANCEL = """#!/usr/bin/env bash
# Stand-in for `scancel --signal=SIG JOBID`: signals the job step, not the batch shell.
echo "scancel $*" >> "$FAKE_SLURM_DIR/calls.log"
for arg; do case $arg in --signal=*) sig=${arg#--signal=} ;; esac; done
kill -s "$sig" -- "-$(cat "$FAKE_SLURM_DIR/step.pgid")"
"""

_FAKE_SCONTROL = """#!/usr/bin/env bash
# Stand-in for `scontrol show hostnames LIST` (plain comma lists) and `scontrol requeue JOB`.
case "$1" in
  show) echo "$3" | tr ',' '\\n' ;;
  requeue) echo "requeue $2" >> "$FAKE_SLURM_DIR/calls.log" ;;
  *) exit 1 ;;
esac
"""


def _records(out: Path) -> dict[int, dict]:
    return {
        r["rank"]: r for r in (json.loads(p.read_text()) for p in sorted(out.glob("rank*.json")))
    }


def _check_ranks(records: dict[int, dict], world_size: int) -> None:
    assert sorted(records) == list(range(world_size))
    for r in records.values():
        assert r["world_size"] == world_size
        assert r["all_reduce_sum"] == world_size * (world_size + 1) / 2
    assert len({r["pid"] for r in records.values()}) == world_size


def _wait_for_files(paths: list[Path], job: Launch, timeout: float = LAUNCH_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if job.proc.poll() is not None:
            pytest.fail(
                f"launcher exited with {job.proc.returncode} early; output:\n{job.output()[-4000:]}"
            )
        if time.monotonic() > deadline:
            pytest.fail(
                f"no {[p.name for p in paths]} after {timeout} s; output:\n{job.output()[-4000:]}"
            )
        time.sleep(0.05)


def test_cpu_launcher_runs_two_gloo_ranks(launch, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    job = launch(
        ["bash", str(LAUNCHERS / "cpu.sh"), "2", str(PROBE), "--out", str(out), "--tag", "cpu"]
    )
    assert job.wait() == 0, job.output()[-4000:]
    records = _records(out)
    _check_ranks(records, world_size=2)
    assert {r["backend"] for r in records.values()} == {"gloo"}
    assert [r["tag"] for r in records.values()] == ["cpu", "cpu"]


def test_single_node_forwards_arguments_and_defaults(launch, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    tag = "two words 'quoted' $HOME"
    job = launch(
        ["bash", str(LAUNCHERS / "single_node.sh"), str(PROBE), "--out", str(out), "--tag", tag],
        NPROC_PER_NODE="1",
    )
    assert job.wait() == 0, job.output()[-4000:]
    records = _records(out)
    _check_ranks(records, world_size=1)
    assert records[0]["tag"] == tag  # "$@" reached the script unsplit and unexpanded
    assert records[0]["max_restarts"] == "3"
    assert "SIGUSR1" in records[0]["signals_to_handle"].split(",")


def test_multi_node_two_agents_on_loopback(launch, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    endpoint = f"127.0.0.1:{free_port()}"
    common = dict(
        NNODES="2",
        RDZV_ENDPOINT=endpoint,
        RDZV_ID="launcher-test",
        NPROC_PER_NODE="1",
        MAX_RESTARTS="0",
    )
    cmd = ["bash", str(LAUNCHERS / "multi_node.sh"), str(PROBE), "--out", str(out)]
    nodes = [launch(cmd, name=f"node{n}", NODE_RANK=str(n), **common) for n in (0, 1)]
    for node in nodes:
        assert node.wait() == 0, node.output()[-4000:]
    records = _records(out)
    _check_ranks(records, world_size=2)
    assert {r["local_rank"] for r in records.values()} == {0}
    assert {r["nnodes"] for r in records.values()} == {2}
    assert {r["max_restarts"] for r in records.values()} == {"0"}


def test_default_processes_per_node_follow_the_visible_gpus(launch):
    cmd = ["bash", "-c", f"source {LAUNCHERS / 'common.sh'} && distengine_default_nproc"]
    job = launch(cmd, name="detect")
    assert job.wait(timeout=60) == 0
    assert job.output().split() == [str(max(1, torch.cuda.device_count()))]
    chosen = launch(cmd, name="chosen", NPROC_PER_NODE="5")
    assert chosen.wait(timeout=60) == 0
    assert chosen.output().split() == ["5"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (dict(NNODES="2", RDZV_ENDPOINT="127.0.0.1:29400"), "NODE_RANK"),
        (dict(NODE_RANK="0"), "NNODES RDZV_ENDPOINT"),
        (dict(NNODES="2", NODE_RANK="2", RDZV_ENDPOINT="127.0.0.1:29400"), "NODE_RANK < NNODES"),
        (dict(NNODES="2", NODE_RANK="0", RDZV_ENDPOINT="node0"), "host:port"),
        (dict(NNODES="two", NODE_RANK="0", RDZV_ENDPOINT="node0:1"), "NNODES must be"),
    ],
)
def test_multi_node_refuses_incomplete_settings(launch, env, message):
    job = launch(["bash", str(LAUNCHERS / "multi_node.sh"), str(PROBE)], **env)
    assert job.wait(timeout=30) == 2
    assert message in job.output()


def test_slurm_sbatch_is_valid_bash_with_preemption_settings():
    script = LAUNCHERS / "slurm.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    directives = [
        line.split()[1] for line in script.read_text().splitlines() if line.startswith("#SBATCH")
    ]
    assert "--requeue" in directives
    assert {"--signal=B:USR1@120", "--signal=USR1@120"} & set(directives)
    assert "--ntasks-per-node=1" in directives


def _fake_slurm(tmp_path: Path, nproc: int, **extra: str) -> dict[str, str]:
    bin_dir = tmp_path / "fake_slurm_bin"
    bin_dir.mkdir()
    for name, text in (
        ("srun", _FAKE_SRUN),
        ("scancel", _FAKE_SCANCEL),
        ("scontrol", _FAKE_SCONTROL),
    ):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return dict(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        FAKE_SLURM_DIR=str(tmp_path),
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST="127.0.0.1",
        SLURM_JOB_NUM_NODES="1",
        SLURM_SUBMIT_DIR=str(REPO),
        RDZV_PORT=str(free_port()),
        NPROC_PER_NODE=str(nproc),
        MAX_RESTARTS="0",
        PYTHON=sys.executable,
        **extra,
    )


def _slurm_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_slurm_preemption_warning_checkpoints_and_requeues(launch, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    job = launch(
        [
            "bash",
            str(LAUNCHERS / "slurm.sbatch"),
            str(PROBE),
            "--out",
            str(out),
            "--wait-signal",
            "60",
        ],
        name="sbatch",
        **_fake_slurm(tmp_path, nproc=2),
    )
    _wait_for_files([out / "rank0.json", out / "rank1.json"], job)
    job.proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 sends to the batch shell
    status = job.wait()
    records = _records(out)
    _check_ranks(records, world_size=2)
    # torchrun forwarded the signal to both workers, and their status 75 survived torchrun.
    assert {r["signal"] for r in records.values()} == {"SIGUSR1"}, job.output()[-4000:]
    assert status == 75, job.output()[-4000:]
    assert _slurm_calls(tmp_path) == ["scancel --signal=USR1 4242", "requeue 4242"]


def test_slurm_does_not_requeue_a_failed_job(launch, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    job = launch(
        [
            "bash",
            str(LAUNCHERS / "slurm.sbatch"),
            str(PROBE),
            "--out",
            str(out),
            "--exit-code",
            "3",
        ],
        name="sbatch",
        **_fake_slurm(tmp_path, nproc=1),
    )
    status = job.wait()
    assert _records(out)[0]["signal"] is None
    assert status not in (0, 75), job.output()[-4000:]
    assert not any(call.startswith("requeue") for call in _slurm_calls(tmp_path))


def test_node_sh_passes_a_pod_sigterm_on_and_exits_with_the_preemption_status(launch, tmp_path):
    """What a Kubeflow pod does on eviction: SIGTERM to the container's first process only.

    torchrun takes its settings from PET_* variables (as the operator sets them); node.sh
    passes the signal to torchrun, the workers exit with DISTENGINE_PREEMPT_EXIT=143, and
    node.sh, not torchrun (which exits 1), gives the container that status.
    """
    out = tmp_path / "out"
    out.mkdir()
    job = launch(
        [
            "bash",
            str(LAUNCHERS / "node.sh"),
            "torchrun",
            str(PROBE),
            "--out",
            str(out),
            "--wait-signal",
            "60",
        ],
        name="node",
        PET_STANDALONE="1",
        PET_NPROC_PER_NODE="2",
        PET_MAX_RESTARTS="0",
        DISTENGINE_PREEMPT_EXIT="143",
        PYTHON=sys.executable,
    )
    _wait_for_files([out / "rank0.json", out / "rank1.json"], job)
    job.proc.send_signal(signal.SIGTERM)  # to node.sh alone, as the kubelet does to PID 1
    status = job.wait()
    records = _records(out)
    _check_ranks(records, world_size=2)
    assert {r["signal"] for r in records.values()} == {"SIGTERM"}, job.output()[-4000:]
    assert status == 143, job.output()[-4000:]


def test_node_sh_reports_a_failure_as_a_failure(launch, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    job = launch(
        [
            "bash",
            str(LAUNCHERS / "node.sh"),
            "torchrun",
            str(PROBE),
            "--out",
            str(out),
            "--exit-code",
            "3",
        ],
        name="node",
        PET_STANDALONE="1",
        PET_NPROC_PER_NODE="1",
        PET_MAX_RESTARTS="0",
        DISTENGINE_PREEMPT_EXIT="143",
        PYTHON=sys.executable,
    )
    assert job.wait() == 1, job.output()[-4000:]  # torchrun's status: a permanent failure
    assert _records(out)[0]["signal"] is None


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["2", "1"], dict(RDZV_ENDPOINT="127.0.0.1:29400"), "MIN:MAX must be"),
        (["3:2", "1"], dict(RDZV_ENDPOINT="127.0.0.1:29400"), "MIN:MAX must be"),
        (["0:2", "1"], dict(RDZV_ENDPOINT="127.0.0.1:29400"), "MIN:MAX must be"),
        (["1:2", "0"], dict(RDZV_ENDPOINT="127.0.0.1:29400"), "NPROC must be >= 1"),
        (["1:2", "x"], dict(RDZV_ENDPOINT="127.0.0.1:29400"), "NPROC must be"),
        (["1:2", "1"], {}, "needs RDZV_ENDPOINT"),
        (["1:2", "1"], dict(RDZV_ENDPOINT="node0"), "host:port"),
        (["1:2", "1"], dict(RDZV_ENDPOINT="node0:1", RDZV_IS_HOST="yes"), "RDZV_IS_HOST"),
        (["1:2", "1"], dict(RDZV_ENDPOINT="node0:1", RDZV_LAST_CALL="soon"), "RDZV_LAST_CALL"),
    ],
)
def test_elastic_refuses_bad_settings(launch, args, env, message):
    job = launch(["bash", str(LAUNCHERS / "elastic.sh"), *args, str(PROBE)], **env)
    assert job.wait(timeout=30) == 2
    assert message in job.output()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["torchrun"], {}, "usage"),
        (["mpirun", str(PROBE)], {}, "MODE must be"),
        (["elastic", str(PROBE)], {}, "NNODES=MIN:MAX"),
        (
            ["torchrun", str(PROBE)],
            dict(DISTENGINE_FORWARD_SIGNALS="maybe"),
            "DISTENGINE_FORWARD_SIGNALS",
        ),
    ],
)
def test_node_sh_refuses_bad_settings(launch, args, env, message):
    job = launch(["bash", str(LAUNCHERS / "node.sh"), *args], **env)
    assert job.wait(timeout=30) == 2
    assert message in job.output()
