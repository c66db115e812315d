"""Elastic membership end to end: two torchrun agents on loopback through launchers/elastic.sh.

The job (tests/e2e/scripts/elastic_job.py: 3 epochs of 8 iterations, a checkpoint every 3
iterations, random augmentation) records the sample indices its ``__getitem__`` reads. Every
worker process of every membership round writes where it resumed and its share of the
global batch, so the test can rebuild, for every iteration of the whole run, the global
batch the optimizer trained on, and compare it with an uninterrupted one-process run of the
same job: equal global batches in the same order mean every sample of every pass exactly
once, whatever happened between the rounds. Final weights are equal to float tolerance
(the world size changed: reduction order differs).

Determinism: node ``a`` (the rendezvous host) starts alone and its worker holds at a given
iteration until its agent's SIGTERM (sent when node ``b`` joins); it then stops for
preemption after writing its checkpoint, and the job restarts with both nodes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch
from launching import LAUNCH_TIMEOUT, REPO, Launch, free_port

ELASTIC = REPO / "launchers" / "elastic.sh"
JOB = REPO / "tests" / "e2e" / "scripts" / "elastic_job.py"
ITERATIONS = 24
RUN_TIMEOUT = 180  # a whole elastic run, several rounds; ~30 s here when the machine is idle

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _env(endpoint: str, node: str, host: bool) -> dict[str, str]:
    return dict(
        RDZV_ENDPOINT=endpoint,
        RDZV_ID="elastic-e2e",
        RDZV_IS_HOST="1" if host else "0",
        RDZV_LAST_CALL="1",
        # a node that vanished is dropped from the rendezvous after 5 missed heartbeats of
        # 1 s (fewer is unsafe: torch skips a heartbeat when the timer fires a moment early)
        RDZV_CONF="keep_alive_interval=1,keep_alive_max_attempt=5",
        MAX_RESTARTS="2",
        ELASTIC_NODE=node,
        DISTENGINE_BACKEND="gloo",
        # the survivor hosts the workers' store: it waits at most this long for the dead
        # peer's acknowledgement before it exits and its agent restarts it
        DISTENGINE_FAILURE_TIMEOUT="3",
    )


def _wait_until(cond, what: str, jobs: list[Launch], timeout: float = LAUNCH_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        for job in jobs:
            if job.proc.poll() is not None:
                pytest.fail(
                    f"a launcher exited with {job.proc.returncode} before {what}; output:\n"
                    f"{job.output()[-4000:]}"
                )
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout} s; output:\n{jobs[0].output()[-4000:]}")
        time.sleep(0.05)


def _reference(launch, out: Path, *job_args: str) -> tuple[Path, Launch]:
    """Starts the same job, uninterrupted, in one process (no launcher); the test waits for
    it (``_finished``) after starting the elastic job, which spends seconds in rendezvous."""
    ref = out / "reference"
    ref.mkdir(parents=True)
    job = launch([sys.executable, str(JOB), "--out", str(ref), *job_args], name="reference")
    return ref, job


def _finished(ref: tuple[Path, Launch]) -> Path:
    path, job = ref
    assert job.wait(RUN_TIMEOUT) == 0, job.output()[-3000:]
    return path


def _reads(out: Path, pid: int) -> list[int]:
    path = out / f"reads_{pid}.log"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _workers(out: Path) -> list[dict]:
    found = []
    for path in sorted(out.glob("info_*.json")):
        info = json.loads(path.read_text())
        info["pid"] = int(path.stem.split("_")[1])
        found.append(info)
    return found


def _trained_batches(out: Path) -> tuple[dict[int, list[int]], list[tuple[int, int]]]:
    """The global batch trained at each iteration, rebuilt from every round's reads.

    A round is the set of workers that resumed from the same checkpoint; its iterations
    count until the next round's checkpoint (reads after that were lost with the round).
    Returns ``({iteration: global batch}, [(world size, resumed at) per round])``.
    """
    rounds: dict[int, list[dict]] = {}
    for w in _workers(out):
        rounds.setdefault(w["resumed_iteration"] or 0, []).append(w)
    starts = sorted(rounds)
    batches: dict[int, list[int]] = {}
    for i, start in enumerate(starts):
        members = sorted(rounds[start], key=lambda w: w["rank"])
        assert [w["rank"] for w in members] == list(range(members[0]["world"])), members
        end = starts[i + 1] if i + 1 < len(starts) else ITERATIONS
        reads = {w["rank"]: _reads(out, w["pid"]) for w in members}
        for t in range(start + 1, end + 1):
            k = t - start - 1
            batches[t] = sum(
                (reads[w["rank"]][k * w["share"] : (k + 1) * w["share"]] for w in members), []
            )
    return batches, [(rounds[s][0]["world"], s) for s in starts]


def _final(out: Path) -> dict:
    return torch.load(out / "final.pt", weights_only=True)


def _assert_close_to(ref: Path, out: Path) -> None:
    a, b = _final(ref)["model"], _final(out)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), (
            k,
            (a[k] - b[k]).abs().max().item(),
        )


def _start_a_then_b(launch, out: Path, nproc_b: int, hold_at: int, *job_args: str):
    port = free_port()
    endpoint = f"127.0.0.1:{port}"
    args = [str(JOB), "--out", str(out), "--hold-at", str(hold_at), *job_args]
    a = launch(
        ["bash", str(ELASTIC), "1:2", "1", *args], name="node_a", **_env(endpoint, "a", True)
    )
    _wait_until(lambda: (out / "holding").exists(), "worker holding at world size 1", [a])
    b = launch(
        ["bash", str(ELASTIC), "1:2", str(nproc_b), *args],
        name="node_b",
        **_env(endpoint, "b", False),
    )
    return a, b


def test_node_lost_mid_epoch_the_other_finishes_alone(launch, tmp_path):
    """1 node, then 2 (node b joins), then node b's agent and worker are SIGKILLed at
    iteration 10 (mid-epoch; the newest checkpoint is iteration 9): node a finishes alone."""
    out = tmp_path / "run"
    out.mkdir()
    started = _reference(launch, tmp_path)
    a, b = _start_a_then_b(launch, out, 1, 1, "--kill-node", "b", "--kill-at", "10")
    ref = _finished(started)
    assert a.wait(RUN_TIMEOUT) == 0, a.output()[-4000:]
    assert b.wait(RUN_TIMEOUT) != 0  # its agent was SIGKILLed
    assert (out / "killed_at").read_text() == "10"
    batches, rounds = _trained_batches(out)
    # world 1 until b joined (stopped for preemption after iteration 1), 2 until b died
    # (newest checkpoint: iteration 9), then 1 again
    assert rounds == [(1, 0), (2, 1), (1, 9)], rounds
    ref_reads = _reads(ref, _workers(ref)[0]["pid"])
    for t in range(1, ITERATIONS + 1):
        assert batches[t] == ref_reads[(t - 1) * 12 : t * 12], f"global batch of iteration {t}"
    # the pass b died in: every sample exactly once across the two rounds
    assert sorted(sum((batches[t] for t in range(9, 17)), [])) == list(range(96))
    survivors = [w for w in _workers(out) if w["resumed_iteration"] == 9]
    assert [(w["node"], w["ended"], w["last_iteration"]) for w in survivors] == [
        ("a", "completed", ITERATIONS)
    ]
    _assert_close_to(ref, out)


def test_scale_up_with_unequal_shares_keeps_the_global_batch(launch, tmp_path):
    """Node a (1 worker) trains alone; node b (2 workers) joins at iteration 11: the job goes
    on at world size 3 with the same global batch of 10 (shares 4, 3, 3)."""
    out = tmp_path / "run"
    out.mkdir()
    job_args = ("--samples", "80", "--batch-size", "10")
    started = _reference(launch, tmp_path, *job_args)
    a, b = _start_a_then_b(launch, out, 2, 11, *job_args)
    ref = _finished(started)
    assert a.wait(RUN_TIMEOUT) == 0, a.output()[-4000:]
    assert b.wait(RUN_TIMEOUT) == 0, b.output()[-4000:]
    batches, rounds = _trained_batches(out)
    assert rounds == [(1, 0), (3, 11)], rounds
    first = [w for w in _workers(out) if not w["resumed_iteration"]]
    assert [(w["ended"], w["last_iteration"]) for w in first] == [("preempted", 11)]
    grown = sorted(
        (w for w in _workers(out) if w["resumed_iteration"] == 11), key=lambda w: w["rank"]
    )
    assert [w["share"] for w in grown] == [4, 3, 3]
    assert [w["loss_weight"] for w in grown] == pytest.approx([1.2, 0.9, 0.9])
    assert sorted(w["node"] for w in grown) == ["a", "b", "b"]
    ref_reads = _reads(ref, _workers(ref)[0]["pid"])
    for t in range(1, ITERATIONS + 1):
        assert batches[t] == ref_reads[(t - 1) * 10 : t * 10], f"global batch of iteration {t}"
    assert sorted(sum((batches[t] for t in range(9, 17)), [])) == list(range(80))
    _assert_close_to(ref, out)
