"""Static checks of the files in launchers/: they parse, and each engine's exit-code mapping
matches the preemption status the library exits with (DISTENGINE_PREEMPT_EXIT).

No scheduler runs here: each manifest is parsed, the status it gives the library is read
from its environment, the library is asked (in a subprocess, as a worker would start) which
status a preempted run then exits with, and the scheduler's rule is checked to restart that
status without counting it. The shell scripts must be valid bash; the commands the
manifests run must exist.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distengine.distributed.env import (
    DEFAULT_PREEMPT_EXIT,
    PREEMPT_EXIT_ENV,
    preempt_exit_from_env,
)

REPO = Path(__file__).resolve().parents[3]
LAUNCHERS = REPO / "launchers"


def _preempted_code_in_new_process(value: str | None) -> subprocess.CompletedProcess:
    """Runs a fresh interpreter (as a worker starts) and prints ``Preempted(...).code``."""
    env = {k: v for k, v in os.environ.items() if k != PREEMPT_EXIT_ENV}
    if value is not None:
        env[PREEMPT_EXIT_ENV] = value
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    code = "from distengine.engine.preemption import Preempted; print(Preempted(15, 1).code)"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def _library_preempt_status(value: str | None) -> int:
    """The status the library gives a preempted run with DISTENGINE_PREEMPT_EXIT=value
    (what ``Preempted`` reads at import; that it does is checked in a new process below)."""
    saved = os.environ.pop(PREEMPT_EXIT_ENV, None)
    try:
        if value is not None:
            os.environ[PREEMPT_EXIT_ENV] = value
        return preempt_exit_from_env()
    finally:
        os.environ.pop(PREEMPT_EXIT_ENV, None)
        if saved is not None:
            os.environ[PREEMPT_EXIT_ENV] = saved


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _load(name: str) -> dict:
    return yaml.safe_load((LAUNCHERS / name).read_text())


def _runs_node_sh(command: list[str], mode: str) -> None:
    assert command[:3] == ["bash", "launchers/node.sh", mode], command
    assert (REPO / command[1]).is_file()


@pytest.mark.parametrize(
    "script",
    sorted(p.name for p in LAUNCHERS.iterdir() if p.suffix in (".sh", ".sbatch")),
)
def test_shell_scripts_are_valid_bash(script):
    subprocess.run(["bash", "-n", str(LAUNCHERS / script)], check=True, timeout=30)


def test_library_default_is_what_the_scripts_assume():
    assert _library_preempt_status(None) == DEFAULT_PREEMPT_EXIT == 75
    for script in ("slurm.sbatch", "node.sh"):
        text = (LAUNCHERS / script).read_text()
        assert f"${{{PREEMPT_EXIT_ENV}:-{DEFAULT_PREEMPT_EXIT}}}" in text, script


def test_preempted_runs_exit_with_the_configured_status():
    run = _preempted_code_in_new_process("143")
    assert run.returncode == 0 and run.stdout.strip() == "143", run.stderr
    run = _preempted_code_in_new_process("0")  # a preemption that looks like success
    assert run.returncode != 0
    assert "DISTENGINE_PREEMPT_EXIT must be an exit status in 1..255, got 0" in run.stderr


@pytest.mark.parametrize("bad", ["0", "256", "-1", "x", "7.5"])
def test_library_rejects_a_status_no_scheduler_can_see(bad):
    with pytest.raises(
        ValueError, match="DISTENGINE_PREEMPT_EXIT must be an exit status in 1..255"
    ):
        _library_preempt_status(bad)


def test_kubeflow_pytorchjob_retries_the_preemption_status():
    job = _load("kubernetes/pytorchjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert set(specs) == {"Master", "Worker"}
    for role, spec in specs.items():
        # ExitCode: >= 128 is retried (and not counted), 1..127 is a permanent failure
        assert spec["restartPolicy"] == "ExitCode", role
        pod = spec["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch", role  # the operator injects PET_* there
        _runs_node_sh(container["command"], "torchrun")
        status = _env(container)[PREEMPT_EXIT_ENV]
        assert _library_preempt_status(status) == int(status) >= 128, role
        assert (
            int(_env(container)["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"])
            < pod["terminationGracePeriodSeconds"]
        )
    # the failure status of the watchdog (1) stays permanent under this policy
    from distengine.distributed.watchdog import FAILURE_EXIT_CODE

    assert FAILURE_EXIT_CODE < 128


def test_jobset_restarts_on_preemption_without_counting():
    js = _load("kubernetes/jobset.yaml")
    assert (js["apiVersion"], js["kind"]) == ("jobset.x-k8s.io/v1alpha2", "JobSet")
    rules = js["spec"]["failurePolicy"]["rules"]
    free = [r for r in rules if r["action"] == "RestartJobSetAndIgnoreMaxRestarts"]
    assert [r["onJobFailureReasons"] for r in free] == [["PodFailurePolicy"]]
    assert all(r.get("name") for r in rules)
    (rjob,) = js["spec"]["replicatedJobs"]
    job = rjob["template"]["spec"]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["restartPolicy"] == "Never"  # required by podFailurePolicy
    assert job["backoffLimit"] == 0 and job["completionMode"] == "Indexed"
    _runs_node_sh(container["command"], "multi_node")
    env = _env(container)
    status = env[PREEMPT_EXIT_ENV]
    assert _library_preempt_status(status) == int(status)
    fail_on_codes = [r for r in job["podFailurePolicy"]["rules"] if "onExitCodes" in r]
    assert len(fail_on_codes) == 1
    rule = fail_on_codes[0]
    # FailJob gives the Job the reason PodFailurePolicy, which the JobSet rule restarts free
    assert rule["action"] == "FailJob"
    assert rule["onExitCodes"]["operator"] == "In"
    assert rule["onExitCodes"]["values"] == [int(status)]
    assert rule["onExitCodes"]["containerName"] == container["name"]
    disruption = [r for r in job["podFailurePolicy"]["rules"] if "onPodConditions" in r]
    assert disruption[0]["action"] == "FailJob"
    assert disruption[0]["onPodConditions"][0]["type"] == "DisruptionTarget"
    # the rendezvous endpoint is pod 0 of this replicated job, under JobSet's service name
    name = js["metadata"]["name"]
    assert env["RDZV_ENDPOINT"] == f"{name}-{rjob['name']}-0-0.{name}:29400"
    assert int(env["NNODES"]) == job["parallelism"] == job["completions"]


def test_skypilot_recovers_the_preemption_status_without_counting():
    task = _load("skypilot.yaml")
    recovery = task["resources"]["job_recovery"]
    codes = recovery["recover_on_exit_codes"]
    codes = [codes] if isinstance(codes, int) else codes
    status = task["envs"][PREEMPT_EXIT_ENV]
    assert _library_preempt_status(str(status)) == int(status)
    assert int(status) in codes
    assert all(isinstance(c, int) and 0 <= c <= 255 for c in codes)
    assert isinstance(recovery["max_restarts_on_errors"], int)
    assert task["num_nodes"] >= 1
    run = task["run"]
    assert "bash launchers/node.sh multi_node" in run
    for var in ("NNODES", "NODE_RANK", "RDZV_ENDPOINT"):
        assert re.search(rf"export {var}=", run), var
    subprocess.run(["bash", "-n"], input=run, text=True, check=True, timeout=30)


def test_slurm_requeues_on_the_library_status():
    text = (LAUNCHERS / "slurm.sbatch").read_text()
    assert f"preempt_exit=${{{PREEMPT_EXIT_ENV}:-{DEFAULT_PREEMPT_EXIT}}}" in text
    assert f"export {PREEMPT_EXIT_ENV}=$preempt_exit" in text
    requeue = text[text.index('if [ "$status" -eq "$preempt_exit" ]') :]
    assert "scontrol requeue" in requeue.split("elif")[0]
    node = (LAUNCHERS / "slurm_node.sh").read_text()
    assert 'exec bash "$here/node.sh" multi_node "$@"' in node
    assert "DISTENGINE_FORWARD_SIGNALS=0" in node  # SLURM signals torchrun itself


def test_elastic_launcher_sets_the_store_workaround():
    text = (LAUNCHERS / "elastic.sh").read_text()
    assert "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in text
    cmd = shlex.split(text[text.index("exec torchrun") :].replace("\\\n", " "))
    assert "--rdzv-backend=c10d" in cmd
    assert '--nnodes="$min_nodes:$max_nodes"'.replace('"', "") in cmd
