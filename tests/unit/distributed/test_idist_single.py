"""distengine.distributed in a job of one (no launcher variables), and its in-process parts."""

import threading

import pytest
import torch
import torch.distributed as dist

import distengine.distributed as idist
from distengine.distributed import env as denv
from distengine.distributed import queries
from distengine.distributed.teardown import release_ddp_modules, track_ddp_module
from distengine.distributed.watchdog import (
    FAILURE_EXIT_CODE,
    FailureWatchdog,
    first_failure,
    record_failure,
)

LAUNCHER = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}


def test_queries_without_launcher():
    assert idist.get_rank() == 0
    assert idist.get_local_rank() == 0
    assert idist.get_world_size() == 1
    assert idist.get_nnodes() == 1
    assert idist.backend() is None
    assert idist.is_main_process()
    assert idist.device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert not dist.is_initialized()


def test_collectives_are_no_ops():
    t = torch.arange(3.0)
    assert idist.all_reduce(t) is t and t.tolist() == [0.0, 1.0, 2.0]
    assert idist.all_reduce(7, op="max") == 7 and isinstance(idist.all_reduce(7), int)
    assert idist.all_reduce(2.5, op="PROD") == 2.5
    assert idist.all_gather(t) is t
    assert idist.all_gather({"a": 1}) == [{"a": 1}]
    assert idist.all_gather("x") == ["x"]
    assert idist.broadcast(t, src=0) is t
    assert idist.broadcast({"seed": 3}) == {"seed": 3}
    idist.barrier()
    entered = []
    with idist.one_rank_first():
        entered.append(True)
    with idist.one_rank_first(local=True):
        entered.append(True)
    assert entered == [True, True]


def test_agreement_without_launcher():
    assert idist.agree_flags(0b10110) == 0b10110
    pending = idist.start_agreement(0b101)
    assert pending.is_completed() and pending.wait() == 0b101
    idist.check_in_sync((1, 2), ("epoch", "iteration"))
    idist.rendezvous_check("unit/1", timeout=1)
    idist.notify_failure(ValueError("alone: nothing to notify"))
    assert idist.get_world_size() == 1


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: idist.all_reduce(torch.ones(1), op="mean"), ValueError, "op must be one of"),
        (lambda: idist.all_reduce("3"), TypeError, "Unhandled input type str: .* tensor, an int"),
        (lambda: idist.all_reduce(1.5, "AND"), TypeError, "bitwise: it needs an int or bool"),
        (lambda: idist.broadcast(1, src=1), ValueError, r"src must be a rank in \[0, 1\), got 1"),
        (lambda: idist.agree_flags(1.0), TypeError, "flags must be an int, got float"),
        (lambda: idist.agree_flags(-1), ValueError, "got -1"),
        (lambda: idist.start_agreement(True), TypeError, "flags must be an int, got bool"),
        (lambda: idist.start_agreement(2**63), ValueError, r"flags must be in \[0, 2\*\*63\)"),
        (lambda: idist.check_in_sync((1,), ("a", "b")), ValueError, "1 values and 2 names"),
        (lambda: idist.check_in_sync((1.5,), ("a",)), TypeError, "a=1.5"),
        (lambda: idist.rendezvous_check("", 1), ValueError, "non-empty str"),
        (lambda: idist.rendezvous_check("t", 0), ValueError, "got 0"),
        (lambda: idist.auto_model("model"), TypeError, "torch.nn.Module, got str"),
        (lambda: idist.auto_optim(object()), TypeError, "Optimizer, got object"),
        (lambda: idist.spawn(print, 0), ValueError, "nprocs must be an int >= 1, got 0"),
        (lambda: idist.spawn(print, 1, args="ab"), TypeError, "got str"),
        (lambda: idist.spawn(print, 1, join=True), ValueError, r"got \['join'\]"),
        (lambda: idist.Parallel(nproc_per_node=0), ValueError, "got 0"),
        (lambda: idist.initialize(timeout=-1), ValueError, "timeout must be > 0"),
        (lambda: idist.initialize(timeout="1"), TypeError, "got str"),
        (lambda: idist.initialize(failure_timeout=0), ValueError, "failure_timeout"),
    ],
)
def test_user_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_one_rank_first_validates_rank():
    with pytest.raises(ValueError, match=r"rank should be between 0 and 0, but given 1 \(rank\)"):
        with idist.one_rank_first(rank=1):
            pass


def test_auto_model_and_optim_alone(monkeypatch):
    model = torch.nn.Linear(3, 2)
    wrapped = idist.auto_model(model)
    assert not isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
    assert next(wrapped.parameters()).device.type == idist.device().type
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    assert idist.auto_optim(opt) is opt
    monkeypatch.setattr(queries, "get_world_size", lambda: 2)  # as if launched, but without a group
    with pytest.raises(ValueError, match="sync_bn=True needs the nccl backend"):
        idist.auto_model(torch.nn.BatchNorm1d(2), sync_bn=True)


def test_parallel_without_launcher_runs_in_process():
    with idist.Parallel(backend="gloo") as parallel:
        result = parallel.run(
            lambda local_rank, a, b=0: (local_rank, a, b, idist.get_world_size()), 5, b=6
        )
    assert result == (0, 5, 6, 1)


def test_finalize_alone_and_initialize_alone_are_no_ops():
    idist.initialize()
    idist.finalize()
    assert idist.get_world_size() == 1 and idist.backend() is None


def test_read_env(monkeypatch):
    assert denv.read_env() is None
    for k, v in LAUNCHER.items():
        monkeypatch.setenv(k, v)
    env = denv.read_env()
    assert (env.rank, env.world_size, env.local_rank) == (1, 2, 1)
    assert (env.local_world_size, env.nnodes) == (2, 1)
    assert not env.hosted_store and env.master_port == 29511
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    env = denv.read_env()
    assert env.hosted_store and env.restart_count == 2 and env.nnodes == 2
    monkeypatch.setenv("GROUP_WORLD_SIZE", "3")
    assert denv.read_env().nnodes == 3


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("MASTER_PORT", "", "missing MASTER_PORT"),
        ("RANK", "2", "RANK must be < WORLD_SIZE=2, got RANK=2"),
        ("WORLD_SIZE", "two", "WORLD_SIZE must be an integer, got 'two'"),
        ("LOCAL_RANK", "5", "LOCAL_RANK must be < LOCAL_WORLD_SIZE=2"),
    ],
)
def test_read_env_errors(monkeypatch, name, value, match):
    for k, v in LAUNCHER.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=match):
        denv.read_env()


def test_failure_timeout_from_env(monkeypatch):
    assert denv.failure_timeout_from_env() == denv.DEFAULT_FAILURE_TIMEOUT
    monkeypatch.setenv(denv.FAILURE_TIMEOUT_ENV, "2.5")
    assert denv.failure_timeout_from_env() == 2.5
    for bad in ("0", "-1", "soon"):
        monkeypatch.setenv(denv.FAILURE_TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=denv.FAILURE_TIMEOUT_ENV):
            denv.failure_timeout_from_env()


def test_failure_record_first_writer_wins():
    store = dist.HashStore()
    assert first_failure(store) is None
    try:
        raise KeyError("first")
    except KeyError as e:
        record_failure(store, 2, e)
    record_failure(store, 0, RuntimeError("second"))
    record = first_failure(store)
    assert record.rank == 2 and record.message == "KeyError: 'first'"
    assert "raise KeyError" in record.traceback


class _ExitRecorder:
    def __init__(self):
        self.code = None
        self.called = threading.Event()

    def __call__(self, code):
        self.code = code
        self.called.set()


def test_watchdog_ends_process_when_a_peer_failed(capfd):
    store, exits = dist.HashStore(), _ExitRecorder()
    dog = FailureWatchdog(store, rank=0, world_size=2, failure_timeout=0.4, exit_fn=exits)
    dog.start()
    try:
        assert not exits.called.wait(3 * dog.poll_interval)  # nothing failed: keeps running
        record_failure(store, 1, ValueError("disk full"))
        assert exits.called.wait(5.0)
    finally:
        dog.stop()
    assert exits.code == FAILURE_EXIT_CODE
    assert "rank 1 failed (ValueError: disk full); ending rank 0" in capfd.readouterr().err
    assert store.add("failure/released", 0) == 1  # rank 0 told the store's host it knows


def test_watchdog_bounds_the_failing_rank_itself(capfd):
    store, exits = dist.HashStore(), _ExitRecorder()
    dog = FailureWatchdog(store, rank=1, world_size=2, failure_timeout=0.3, exit_fn=exits)
    dog.start()
    try:
        record_failure(store, 1, ValueError("mine"))  # its own failure is not a peer's
        assert not exits.called.wait(0.6)
        dog.mark_own_failure()
        assert exits.called.wait(5.0)
    finally:
        dog.stop()
    assert exits.code == FAILURE_EXIT_CODE
    assert (
        "rank 1 reported a failure and is still running at the failure timeout (0.3 s)"
        in capfd.readouterr().err
    )


def test_release_ddp_modules_drops_the_group_references():
    holder = torch.nn.Linear(2, 2)
    holder.reducer, holder.logger, holder.process_group = object(), object(), object()
    holder._comm_hooks = [("hook", "state")]
    track_ddp_module(holder)
    assert release_ddp_modules() == 1
    assert not any(hasattr(holder, a) for a in ("reducer", "logger", "process_group"))
    assert holder._comm_hooks == [] and holder(torch.ones(1, 2)).shape == (1, 2)
    assert release_ddp_modules() == 0


def test_backend_env_override(monkeypatch):
    from distengine.distributed.runtime import _resolve_backend

    monkeypatch.setenv("DISTENGINE_BACKEND", "gloo")
    assert _resolve_backend(None) == "gloo"
    assert _resolve_backend("gloo") == "gloo"  # an explicit argument wins over the variable
    monkeypatch.delenv("DISTENGINE_BACKEND")
    assert _resolve_backend(None) == ("nccl" if torch.cuda.is_available() else "gloo")
