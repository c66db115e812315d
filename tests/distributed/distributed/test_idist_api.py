"""Ignite's idist names on real gloo ranks: reduction ops, groups, safe broadcast,
gathers of any shape, one_rank_only, configuration queries, and the three init methods
(env, tcp, file) of ``initialize``, plus groups the user creates and destroys."""

import logging
import sys
from pathlib import Path

import pytest
import torch
from helpers import child_env, free_port, run_processes

import distengine.distributed as idist
from distengine import Engine, Events

pytestmark = pytest.mark.timeout(120)

SCRIPTS = Path(__file__).parent / "scripts"


def _check_ops_and_groups(local_rank: int, world: int) -> str:
    r = idist.get_rank()
    assert idist.model_name() == "native-dist"
    assert (idist.get_nproc_per_node(), idist.get_node_rank()) == (world, 0)

    # reduction ops under Ignite's names, tensors and numbers
    assert idist.all_reduce(torch.tensor([r + 1.0]), "PRODUCT").item() == float(
        torch.arange(1, world + 1).prod()
    )
    assert idist.all_reduce(r + 2, op="product") == int(torch.arange(2, world + 2).prod())
    assert idist.all_reduce(torch.tensor([r + 1]), "MIN").item() == 1
    assert idist.all_reduce(torch.tensor(0b110 if r == 0 else 0b011), "AND").item() == 0b010
    assert idist.all_reduce(torch.tensor(1 << r), "OR").item() == (1 << world) - 1
    assert idist.all_reduce(r == 0, "OR") is True
    assert idist.all_reduce(r == 0, "AND") is False
    assert idist.all_reduce(True, "sum") == world  # a bool summed counts the ranks
    with pytest.raises(TypeError, match="bitwise"):
        idist.all_reduce(torch.ones(1), "AND")
    with pytest.raises(ValueError, match="Unsupported reduction operation 'XOR'"):
        idist.all_reduce(1, "XOR")
    with pytest.raises(TypeError, match="Unhandled input type str"):
        idist.all_reduce("abc")

    # groups: the last world-1 ranks; rank 0 is outside
    ranks = list(range(1, world))
    group = idist.new_group(ranks)  # every rank calls new_group
    assert idist.utils._rank_not_in_group(group) == (r == 0)
    for g in (group, ranks):  # a group or a plain list (made once, by the members)
        t = torch.tensor([float(r)])
        out = idist.all_reduce(t, group=g)
        assert out.item() == (float(sum(ranks)) if r in ranks else float(r))
        gathered = idist.all_gather(torch.tensor([r]), group=g)
        assert gathered.tolist() == (ranks if r in ranks else [r])
        objs = idist.all_gather({"r": r}, group=g)
        assert objs == ([{"r": k} for k in ranks] if r in ranks else {"r": r})
    # ragged first dims within a group
    ragged = idist.all_gather(torch.arange(r + 1), group=ranks)
    if r in ranks:
        assert ragged.tolist() == [i for k in ranks for i in range(k + 1)]
    with pytest.raises(ValueError, match="group should be list of int or ProcessGroup"):
        idist.all_reduce(torch.ones(1), group="abc")
    with pytest.raises(ValueError, match=rf"ranks should be in \[0, {world}\)"):
        idist.all_gather(torch.ones(1), group=[0, world])
    with pytest.raises(ValueError, match="ranks should be list of int"):
        idist.new_group(["a"])

    # all_gather_tensors_with_shapes: every dimension differs per rank
    shapes = [[k + 1, k + 2, 2] for k in range(world)]
    mine = torch.full(shapes[r], float(r))
    parts = idist.all_gather_tensors_with_shapes(mine, shapes)
    assert [list(p.shape) for p in parts] == shapes
    assert all(
        torch.equal(p, torch.full(s, float(k))) for k, (p, s) in enumerate(zip(parts, shapes))
    )
    sub = idist.all_gather_tensors_with_shapes(
        mine if r in ranks else torch.zeros(1), [shapes[k] for k in ranks], ranks
    )
    if r in ranks:
        assert [list(p.shape) for p in sub] == [shapes[k] for k in ranks]
    else:
        assert len(sub) == 1 and torch.equal(sub[0], torch.zeros(1))
    with pytest.raises(ValueError, match="should be the shape of this rank's tensor"):
        idist.all_gather_tensors_with_shapes(torch.zeros(9), shapes)

    # broadcast: safe_mode lets the others pass anything (None included)
    for src in range(world):
        t = torch.arange(6.0).reshape(2, 3) * (src + 1)
        got = idist.broadcast(t if r == src else None, src=src, safe_mode=True)
        assert torch.equal(got, t) and got.dtype == t.dtype
        got = idist.broadcast(t.int() if r == src else "placeholder", src=src, safe_mode=True)
        assert torch.equal(got, t.int())
        assert idist.broadcast(Path("a/b") if r == src else None, src=src, safe_mode=True) == Path(
            "a/b"
        )
        assert idist.broadcast(f"from {src}" if r == src else 1.5, src=src, safe_mode=True) == (
            f"from {src}"
        )
        assert idist.broadcast(3.25 if r == src else 0.0, src=src) == 3.25
    # objects, None included: the non-source ranks' values are ignored
    assert idist.broadcast(None if r == 0 else "ignored", src=0) is None
    assert idist.broadcast({"k": r}, src=world - 1) == {"k": world - 1}

    # one_rank_only, plain and as an engine handler, with and without barrier
    for barrier in (False, True):
        hits = torch.zeros(1)

        @idist.one_rank_only(rank=world - 1, with_barrier=barrier)
        def bump():
            hits.add_(100)

        assert bump() is None
        assert idist.all_gather(hits).tolist() == [0.0] * (world - 1) + [100.0]

        engine = Engine(lambda e, b: b)
        total = torch.zeros(1)

        @engine.on(Events.ITERATION_COMPLETED)
        @idist.one_rank_only(with_barrier=barrier)
        def add(e):
            total.add_(e.state.batch)

        engine.run([1, 2, 3], max_epochs=2)
        assert idist.all_gather(total).tolist() == [12.0] + [0.0] * (world - 1)

    with pytest.raises(ValueError, match=rf"rank={world}\) in a job of {world} rank"):
        idist.one_rank_only(rank=world)(lambda: None)()
    return "ok"


@pytest.mark.parametrize("world", [2, 3])
def test_ops_groups_broadcast_on_real_ranks(world):
    assert idist.spawn(_check_ops_and_groups, world, args=(world,)) == ["ok"] * world


def test_alone_the_same_calls_are_no_ops(caplog):
    t = torch.tensor([2.0])
    assert idist.all_reduce(t, "PRODUCT", group=[0, 1]) is t
    assert idist.all_reduce(True, "AND") is True
    assert idist.all_gather(t, group=[0, 1]) is t
    assert idist.all_gather("x", group=[0]) == ["x"]
    assert idist.all_gather_tensors_with_shapes(t, [[1]], group=[0]) == [t]
    assert idist.broadcast(t, safe_mode=True) is t
    assert idist.broadcast(None) is None
    assert idist.new_group([0, 1]) == [0, 1]  # Ignite: the list itself without a group
    with pytest.raises(ValueError, match="ranks should be list of int"):
        idist.new_group(1)
    with pytest.raises(ValueError, match="group should be list of int or ProcessGroup"):
        idist.all_reduce(t, group="abc")
    assert idist.model_name() == "serial"
    assert (idist.get_nproc_per_node(), idist.get_node_rank(), idist.get_nnodes()) == (1, 0, 1)
    assert idist.has_native_dist_support and not idist.has_xla_support
    assert not idist.has_hvd_support
    assert "gloo" in idist.available_backends()
    assert idist.one_rank_only()(lambda: 5)() == 5
    with pytest.raises(ValueError, match="rank must be an int >= 0"):
        idist.one_rank_only(rank=-1)
    with pytest.raises(ValueError, match="index must be an int >= 0"):
        idist.set_local_rank(-2)
    idist.sync()
    assert idist.get_world_size() == 1


def test_show_config_logs_the_configuration(capsys):
    idist.show_config()
    err = capsys.readouterr().err
    for line in (
        "distengine.distributed.utils INFO: distributed configuration: serial",
        "INFO: backend: None",
        "INFO: world size: 1",
        "INFO: rank: 0",
        "INFO: local rank: 0",
        "INFO: num nodes: 1",
    ):
        assert line in err, err
    logging.getLogger("distengine.distributed.utils").handlers.clear()


def _no_launcher_env(extra: dict) -> dict:
    env = child_env()
    for key in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
    ):
        env.pop(key, None)
    env.update(extra)
    return env


@pytest.mark.parametrize(
    ("scheme", "world", "how"),
    [("tcp", 2, "args"), ("file", 3, "args"), ("file", 2, "env"), ("env", 2, "args")],
)
def test_initialize_with_init_method(scheme, world, how, tmp_path):
    """Plain processes, no launcher: they meet through tcp://, file:// or env://."""
    port = free_port()
    url = {
        "tcp": f"tcp://127.0.0.1:{port}",
        "file": f"file://{tmp_path}/rendezvous",
        "env": "env://",
    }[scheme]
    envs = []
    for r in range(world):
        extra = {"INIT_METHOD": url, "HOW": how, "ARG_RANK": str(r), "ARG_WORLD": str(world)}
        if scheme == "env":
            extra.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        env = _no_launcher_env(extra)
        if how == "env":  # rank and world size from RANK/WORLD_SIZE, no MASTER_*
            env.update(RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r))
        envs.append(env)
    cmd = [sys.executable, str(SCRIPTS / "init_method_rank.py")]
    results = run_processes([cmd] * world, envs, timeout=90)
    for r in results:
        assert not r.timed_out and r.returncode == 0, r.stderr
        assert r.stdout.split() == ["OK", str(r.rank), str(world), url], r.stdout


def test_initialize_argument_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="give both rank and world_size"):
        idist.initialize("gloo", init_method=f"file://{tmp_path}/x", rank=0)
    with pytest.raises(ValueError, match="must start with 'env://', 'tcp://' or 'file://'"):
        idist.initialize("gloo", init_method="udp://1.2.3.4:5", rank=0, world_size=1)
    with pytest.raises(ValueError, match="'tcp://HOST:PORT'"):
        idist.initialize("gloo", init_method="tcp://nohost", rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size\)"):
        idist.initialize("gloo", init_method="tcp://127.0.0.1:1", rank=2, world_size=2)
    with pytest.raises(ValueError, match="needs MASTER_ADDR and MASTER_PORT"):
        idist.initialize("gloo", rank=0, world_size=2)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="rank=0 contradicts the environment's RANK=1"):
        idist.initialize("gloo", init_method="tcp://127.0.0.1:1", rank=0, world_size=2)
    assert idist.get_world_size() == 1  # nothing was created by the failed calls


def test_adopted_groups_are_followed_when_destroyed_and_recreated():
    """A program that creates, destroys and re-creates groups itself (Ignite's test fixtures
    do this): idist follows each group, set_local_rank applies, and sync() re-adopts."""
    port = free_port()
    port2 = free_port()
    while port2 == port:
        port2 = free_port()
    ports = {"ARG_PORT": str(port), "ARG_PORT2": str(port2)}
    envs = [_no_launcher_env({"ARG_RANK": str(r), "ARG_WORLD": "2", **ports}) for r in range(2)]
    cmd = [sys.executable, str(SCRIPTS / "regrouping.py")]
    results = run_processes([cmd] * 2, envs, timeout=90)
    for r in results:
        assert not r.timed_out and r.returncode == 0, r.stderr
        assert r.stdout.split() == ["OK", str(r.rank)], r.stdout


def test_parallel_checks_its_arguments(monkeypatch):
    with pytest.raises(ValueError, match="nnodes must be an int >= 1"):
        idist.Parallel(backend="gloo", nproc_per_node=1, nnodes=-1)
    with pytest.raises(ValueError, match="on this node only"):
        idist.Parallel(backend="gloo", nproc_per_node=1, nnodes=2, node_rank=1)
    with pytest.raises(ValueError, match="supported under a launcher only"):
        idist.Parallel(backend="gloo", nproc_per_node=2, init_method="file:///tmp/x")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1234")
    with pytest.raises(ValueError, match=r"nnodes=2 contradicts the launcher .*nnodes is 1"):
        idist.Parallel(backend="gloo", nnodes=2)


def _ignite_style(local_rank: int, a: int, b: int, d: int = 0) -> tuple:
    return (local_rank, idist.get_world_size(), a + b, d)


def test_spawn_takes_ignite_argument_order():
    expected = [(r, 2, 3, 4) for r in range(2)]
    assert idist.spawn("gloo", _ignite_style, (1, 2), {"d": 4}, nproc_per_node=2) == expected
    assert (
        idist.spawn("gloo", _ignite_style, args=(1, 2), kwargs_dict={"d": 4}, nproc_per_node=2)
        == expected
    )
    with pytest.raises(ValueError, match="this node only"):
        idist.spawn("gloo", _ignite_style, args=(1, 2), nproc_per_node=1, nnodes=2, node_rank=1)
    with pytest.raises(ValueError, match="supported under a launcher only"):
        idist.spawn("gloo", _ignite_style, args=(1, 2), init_method="file:///tmp/x")


def _env_probe(local_rank: int, name: str) -> str | None:
    import os

    return os.environ.get(name)


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_spawned_ranks_see_the_callers_environment_at_the_call(monkeypatch, start_method):
    # a fork server started before the variable was set (the tests' fork server is)
    idist.spawn(_env_probe, 1, backend="gloo", args=("X",), start_method=start_method)
    monkeypatch.setenv("DISTENGINE_TEST_PROBE", "set after the server started")
    got = idist.spawn(
        _env_probe, 2, backend="gloo", args=("DISTENGINE_TEST_PROBE",), start_method=start_method
    )
    assert got == ["set after the server started"] * 2
