"""Contract 1: storage every rank can read. A directory only one rank sees is refused on
every rank with a clear error; a shared one passes (2 gloo ranks)."""

import torch

import distengine.distributed as idist
from distengine.checkpoint import CheckpointError
from distengine.engine import Engine
from distengine.handlers import Checkpoint, DiskSaver


def _job(local_rank, shared_dir):
    engine = Engine(lambda e, b: b)
    engine.run([0], max_epochs=1, seed=0)
    model = torch.nn.Linear(2, 2)
    out = {}
    # memory:// lives inside each process: rank 1 cannot see what rank 0 writes there
    private = Checkpoint(
        {"model": model, "trainer": engine}, DiskSaver("memory://not-shared", require_empty=False)
    )
    try:
        private(engine)
        out["private"] = None
    except CheckpointError as e:
        out["private"] = str(e)
    shared = Checkpoint(
        {"model": model, "trainer": engine}, DiskSaver(shared_dir, require_empty=False)
    )
    shared(engine)
    out["shared_latest"] = Checkpoint.latest(shared_dir)
    return out


def test_unshared_storage_is_refused_on_every_rank(tmp_path):
    results = idist.spawn(_job, 2, args=(str(tmp_path),))
    for r in results:
        assert r["private"] is not None and "not shared by all ranks" in r["private"]
        assert "rank 1" in r["private"] and "rank 0 on" not in r["private"]
        assert r["shared_latest"] is not None and r["shared_latest"].endswith(".pt")
    assert not [
        p for p in tmp_path.iterdir() if p.name.startswith(".distengine-shared")
    ]  # probe removed
