"""Ranks whose save handlers name different directories (Ignite's cifar10 example gives
rank 0 alone a per-run sub-folder): the writing rank's directory is used and checked, the
other ranks warn, and nothing is written where the other ranks point (2 gloo ranks)."""

import os
import warnings

import torch

import distengine.distributed as idist
from distengine.engine import Engine
from distengine.handlers import Checkpoint, DiskSaver


def _job(local_rank, base, writer):
    rank = idist.get_rank()
    engine = Engine(lambda e, b: b)
    engine.run([0], max_epochs=1, seed=0)
    model = torch.nn.Linear(2, 2)
    own = os.path.join(base, "run-of-writer") if rank == writer else base
    handler = Checkpoint(
        {"model": model, "trainer": engine},
        DiskSaver(own, require_empty=False),
        save_on_rank=writer,
        n_saved=None,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        handler(engine)
        engine.state.iteration += 1
        handler(engine)  # the second save does not check again
    return [str(w.message) for w in caught if "differs from" in str(w.message)]


def test_the_writing_ranks_directory_is_used(tmp_path):
    for writer in (0, 1):
        base = tmp_path / f"writer{writer}"
        results = idist.spawn(_job, 2, args=(str(base), writer))
        other = 1 - writer
        assert results[writer] == []
        assert len(results[other]) == 1  # warned once, at the handler's first save
        assert f"{str(base)!r} differs from {str(base / 'run-of-writer')!r}" in results[other][0]
        assert f"where rank {writer} writes" in results[other][0]
        written = sorted(p.name for p in (base / "run-of-writer").iterdir())
        assert written == [
            "checkpoint_1.pt",
            "checkpoint_1.pt.manifest.json",
            "checkpoint_2.pt",
            "checkpoint_2.pt.manifest.json",
        ]
        assert sorted(p.name for p in base.iterdir()) == ["run-of-writer"]
