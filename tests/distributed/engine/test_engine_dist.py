"""The Engine on 2-3 gloo ranks (idist.spawn): agreement, seeds, sharding, desync check, DDP."""

import pytest
import torch

import distengine.distributed as idist
from distengine.engine import Engine, Events, create_supervised_trainer

TRACED = (
    "EPOCH_STARTED",
    "EPOCH_COMPLETED",
    "TERMINATE",
    "TERMINATE_SINGLE_EPOCH",
    "INTERRUPT",
    "COMPLETED",
)


def _traced_engine(trace):
    eng = Engine(lambda e, b: b)
    for name in TRACED:
        eng.add_event_handler(
            getattr(Events, name),
            lambda e, n=name: trace.append((n, e.state.epoch, e.state.iteration)),
        )
    eng.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: trace.append(("it", e.state.iteration))
    )
    return eng


def _agreement_job(local_rank, requester, overlap):
    rank = idist.get_rank()
    out = {}

    def traced():
        trace = []
        eng = _traced_engine(trace)
        eng.overlap_agreement = overlap
        return eng, trace

    # terminate() requested on one non-zero rank from ITERATION_STARTED of iteration 5
    eng, out["terminate"] = traced()
    if rank == requester:
        eng.add_event_handler(Events.ITERATION_STARTED(once=5), lambda e: e.terminate())
    eng.run(range(4), max_epochs=3, seed=1)
    # terminate_epoch() from GET_BATCH_COMPLETED of iteration 2
    eng, out["terminate_epoch"] = traced()
    if rank == requester:
        eng.add_event_handler(Events.GET_BATCH_COMPLETED(once=1), lambda e: e.terminate_epoch())
    eng.run(range(4), max_epochs=2, seed=1)
    # interrupt() then run() again, continuing in place
    eng, trace = traced()
    out["interrupt"] = trace
    if rank == requester:
        eng.add_event_handler(Events.ITERATION_COMPLETED(once=6), lambda e: e.interrupt())
    eng.run(range(4), max_epochs=2, seed=1)
    trace.append(("returned", eng.state.iteration))
    eng.run(range(4), max_epochs=2)
    # terminate() from an epoch-level event: takes effect at that epoch boundary
    eng, out["epoch_level"] = traced()
    if rank == requester:
        eng.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda e: e.terminate())
    eng.run(range(4), max_epochs=3, seed=1)
    # terminate() at the last iteration of an epoch: before that epoch's EPOCH_COMPLETED
    eng, out["epoch_end"] = traced()
    if rank == requester:
        eng.add_event_handler(Events.ITERATION_COMPLETED(once=4), lambda e: e.terminate())
    eng.run(range(4), max_epochs=3, seed=1)
    # terminate() one iteration before max_iters: the run's last iteration
    eng, out["max_iters"] = traced()
    if rank == requester:
        eng.add_event_handler(Events.ITERATION_COMPLETED(once=5), lambda e: e.terminate())
    eng.run(range(4), max_iters=6, seed=1)
    # requests of two consecutive iterations, on two ranks
    eng, trace = traced()
    out["consecutive"] = trace
    if rank == 0:
        eng.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda e: e.terminate_epoch())
    if rank == requester:
        eng.add_event_handler(Events.ITERATION_COMPLETED(once=2), lambda e: e.interrupt())
    eng.run(range(4), max_epochs=2, seed=1)
    trace.append(("returned", eng.state.iteration))
    eng.run(range(4), max_epochs=2)
    # seed drawn on rank 0 and broadcast
    out["seed"] = Engine(lambda e, b: b).run(range(2)).seed
    return out


def _its(trace):
    return [x[1] for x in trace if x[0] == "it"]


@pytest.mark.parametrize("world,requester", [(2, 1), (3, 2)])
def test_requests_on_one_rank_take_effect_everywhere(world, requester):
    """The default (overlapped agreement): a request made during iteration i takes effect on
    every rank at the end of iteration i + 1 (the same iteration on every rank)."""
    results = idist.spawn(_agreement_job, world, args=(requester, True))
    ref = results[0]
    for r in results[1:]:
        assert r == ref  # same events, same iterations, same seed on every rank
    assert _its(ref["terminate"]) == [1, 2, 3, 4, 5, 6]  # requested in 5: effective after 6
    assert ref["terminate"][-2:] == [("TERMINATE", 2, 6), ("COMPLETED", 2, 6)]
    # requested while fetching the batch of iteration 2: effective at the end of iteration 3
    assert ("TERMINATE_SINGLE_EPOCH", 1, 3) in ref["terminate_epoch"]
    assert ref["terminate_epoch"][-1] == ("COMPLETED", 2, 7)
    assert ("returned", 7) in ref["interrupt"] and ref["interrupt"][-1] == ("COMPLETED", 2, 8)
    assert ref["epoch_level"][-2:] == [("TERMINATE", 1, 4), ("COMPLETED", 1, 4)]
    # the last iteration of an epoch or of the run agrees at once
    assert ref["epoch_end"][-3:] == [("it", 4), ("TERMINATE", 1, 4), ("COMPLETED", 1, 4)]
    assert ref["max_iters"][-2:] == [("TERMINATE", 2, 6), ("COMPLETED", 2, 6)]
    # iteration 1's request takes effect after iteration 2 and carries iteration 2's along
    assert ref["consecutive"][:6] == [
        ("EPOCH_STARTED", 1, 0),
        ("it", 1),
        ("it", 2),
        ("TERMINATE_SINGLE_EPOCH", 1, 2),
        ("EPOCH_COMPLETED", 1, 2),
        ("INTERRUPT", 1, 2),
    ]
    assert ("returned", 2) in ref["consecutive"] and ref["consecutive"][-1] == ("COMPLETED", 2, 6)
    assert ref["seed"] == results[-1]["seed"]


@pytest.mark.parametrize("world,requester", [(2, 1), (3, 2)])
def test_requests_take_effect_at_their_iteration_without_overlap(world, requester):
    """``overlap_agreement = False``: one blocking agreement per iteration, so a request
    takes effect on every rank at the end of the iteration that made it."""
    results = idist.spawn(_agreement_job, world, args=(requester, False))
    ref = results[0]
    for r in results[1:]:
        assert r == ref
    assert _its(ref["terminate"]) == [1, 2, 3, 4, 5]  # stopped at the end of the request's
    assert ref["terminate"][-2:] == [("TERMINATE", 2, 5), ("COMPLETED", 2, 5)]
    assert ("TERMINATE_SINGLE_EPOCH", 1, 2) in ref["terminate_epoch"]
    assert ref["terminate_epoch"][-1] == ("COMPLETED", 2, 6)
    assert ("returned", 6) in ref["interrupt"] and ref["interrupt"][-1] == ("COMPLETED", 2, 8)
    assert ref["epoch_level"][-2:] == [("TERMINATE", 1, 4), ("COMPLETED", 1, 4)]
    assert ref["epoch_end"][-3:] == [("it", 4), ("TERMINATE", 1, 4), ("COMPLETED", 1, 4)]
    assert ref["max_iters"][-2:] == [("TERMINATE", 2, 5), ("COMPLETED", 2, 5)]
    assert ref["consecutive"][:5] == [
        ("EPOCH_STARTED", 1, 0),
        ("it", 1),
        ("TERMINATE_SINGLE_EPOCH", 1, 1),
        ("EPOCH_COMPLETED", 1, 1),
        ("EPOCH_STARTED", 2, 1),
    ]
    assert ("returned", 2) in ref["consecutive"] and ref["consecutive"][-1] == ("COMPLETED", 2, 5)


def _seed_mismatch_job(local_rank):
    try:
        Engine(lambda e, b: b).run(range(2), seed=10 + idist.get_rank())
    except ValueError as e:
        return str(e)
    return None


def test_different_seeds_rejected_on_every_rank():
    msgs = idist.spawn(_seed_mismatch_job, 2)
    assert all(m is not None and "same on every rank" in m for m in msgs)


def _sharding_job(local_rank, n, gbs):
    ds = torch.utils.data.TensorDataset(torch.arange(n))
    loader = idist.auto_dataloader(ds, batch_size=gbs, shuffle=True)
    seen = []

    def step(engine, batch):
        pad = engine.state.batch_padding
        idx = batch[0].tolist()
        seen.append((engine.state.iteration, idx[: len(idx) - pad] if pad else idx, pad))

    Engine(step).run(loader, max_epochs=2, seed=3)
    return seen


def test_sharded_epochs_cover_each_sample_once_and_match_one_process():
    n, gbs = 23, 6
    results = idist.spawn(_sharding_job, 3, args=(n, gbs))
    assert len({len(r) for r in results}) == 1  # same number of batches everywhere
    single = _sharding_job(0, n, gbs)  # this process: world size 1
    for it in range(len(single)):
        merged = sum((results[r][it][1] for r in range(3)), [])
        assert merged == single[it][1]  # the same global batches, in the same order
    epoch1 = sum((x[1] for r in results for x in r if x[0] <= len(single) // 2), [])
    assert sorted(epoch1) == list(range(n))


def _desync_job(local_rank):
    ds = torch.utils.data.TensorDataset(torch.arange(40))
    loader = idist.auto_dataloader(ds, batch_size=4)
    if idist.get_rank() == 1:
        loader.sampler.shuffle = False  # rank 1 diverges: it reads another order of samples
    Engine(lambda e, b: b, sync_check_every=2).run(loader, max_epochs=1, seed=0)


def test_sync_check_names_diverging_rank():
    # the check raises on every rank; the job ends and spawn re-raises a rank's error
    with pytest.raises(Exception, match=r"rank 1(.|\n)*batch index digest"):
        idist.spawn(_desync_job, 2)


def _ddp_job(local_rank, accumulate):
    torch.manual_seed(0)
    model = idist.auto_model(
        torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    )
    opt = idist.auto_optim(torch.optim.SGD(model.parameters(), lr=0.05))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 6, generator=g)
    ds = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    loader = idist.auto_dataloader(ds, batch_size=8)
    trainer = create_supervised_trainer(
        model, opt, torch.nn.functional.mse_loss, gradient_accumulation_steps=accumulate
    )
    losses = []
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: losses.append(float(e.state.output))
    )
    trainer.run(loader, max_epochs=6, seed=0)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    return losses, flat


@pytest.mark.parametrize("accumulate", [1, 2])
def test_ddp_trainer_keeps_ranks_identical_and_learns(accumulate):
    (l0, p0), (l1, p1) = idist.spawn(_ddp_job, 2, args=(accumulate,))
    assert torch.equal(p0, p1)
    assert l0[-1] < l0[0]


def _length_mismatch_job(local_rank):
    data = list(range(4 + idist.get_rank()))  # rank 1 has one batch more per epoch
    try:
        Engine(lambda e, b: b).run(data, max_epochs=1, seed=0)
    except ValueError as e:
        return str(e)
    return None


def test_different_epoch_lengths_rejected_on_every_rank():
    msgs = idist.spawn(_length_mismatch_job, 2)
    assert all(m is not None and "same number of iterations" in m for m in msgs), msgs


def _exhausted_job(local_rank, lengths):
    n = lengths[idist.get_rank()]  # a rank whose iterator runs dry first
    seen = []
    eng = Engine(lambda e, b: b)
    eng.add_event_handler(Events.TERMINATE, lambda e: seen.append(("TERMINATE", e.state.epoch)))
    eng.add_event_handler(Events.COMPLETED, lambda e: seen.append(("COMPLETED", e.state.epoch)))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eng.run(iter(range(n)), max_epochs=4, epoch_length=3, seed=0)
    return seen


# dry at an epoch's start (no agreement pending); mid-epoch, with the previous iteration's
# agreement pending (overlapped); on every rank at the same fetch
@pytest.mark.parametrize("lengths", [(6, 3), (6, 4), (4, 4)])
def test_exhausted_iterator_on_one_rank_ends_every_rank(lengths):
    results = idist.spawn(_exhausted_job, 2, args=(lengths,))  # would hang otherwise
    # both ranks end the epoch in which a rank ran dry, then the run (as Ignite ends a run
    # whose data is exhausted: COMPLETED, no TERMINATE)
    assert results[0] == results[1] == [("COMPLETED", 2)]


def _nested_job(local_rank):
    """An evaluator run inside the trainer's ITERATION_COMPLETED handlers, mid-epoch: its
    collectives (run agreement, its own agreements, a metric's gather) come while the
    trainer's overlapped agreement is pending, and a request made on one rank in between
    still stops both ranks together."""
    from distengine.metrics import Average

    rank = idist.get_rank()
    trainer = Engine(lambda e, b: b)
    evaluator = Engine(lambda e, b: float(b + rank))
    Average().attach(evaluator, "mean")
    seen = []

    @trainer.on(Events.ITERATION_COMPLETED(every=2))
    def evaluate(engine):
        seen.append((engine.state.iteration, evaluator.run(range(4)).metrics["mean"]))

    if rank == 1:
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=3), lambda e: e.terminate())
    trainer.run(range(6), max_epochs=2, seed=0)
    return seen, trainer.state.iteration


def test_nested_run_while_the_agreement_is_pending():
    results = idist.spawn(_nested_job, 2)
    assert results[0] == results[1]
    seen, stopped = results[0]
    assert stopped == 4  # requested in iteration 3: after iteration 4 on both ranks
    assert [it for it, _ in seen] == [2, 4]
    assert [mean for _, mean in seen] == [2.0, 2.0]  # mean over ranks of (0..3) + rank
