"""Parameter schedulers: the same values as Ignite 0.5.5 (the oracle), state that resumes
exactly through Checkpoint mid-epoch, and clear errors."""

import copy

import ignite.engine as ig_engine
import ignite.handlers.param_scheduler as ig
import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, ExponentialLR, StepLR

import distengine.handlers.param_scheduler as de
from distengine import Engine, Events
from distengine.handlers import Checkpoint, DiskSaver


def _optimizer(lrs=(0.1,)):
    params = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs]
    return torch.optim.SGD(params, lr=lrs[0], momentum=0.9)


# (name, builder(module, optimizer) -> scheduler, param groups' initial lrs)
CASES = [
    ("linear", lambda m, o: m.LinearCyclicalScheduler(o, "lr", 1.0, 0.0, 10, cycle_mult=2), (0.0,)),
    (
        "linear-monotonic-warmup",
        lambda m, o: m.LinearCyclicalScheduler(
            o, "lr", 1.0, 0.1, 6, warmup_duration=3, monotonic=True, start_value_mult=0.5
        ),
        (0.0,),
    ),
    (
        "cosine",
        lambda m, o: m.CosineAnnealingScheduler(o, "lr", 0.5, 0.01, 7, end_value_mult=0.5),
        (0.0,),
    ),
    (
        "momentum",
        lambda m, o: m.CosineAnnealingScheduler(o, "momentum", 0.85, 0.95, 5),
        (0.1,),
    ),
    (
        "piecewise",
        lambda m, o: m.PiecewiseLinear(o, "lr", [(3, 0.5), (8, 0.1), (8, 0.3), (12, 0.0)]),
        (0.1,),
    ),
    ("torch-step", lambda m, o: m.LRScheduler(StepLR(o, step_size=4, gamma=0.5)), (0.1, 0.2)),
    (
        "torch-warm-restarts",
        lambda m, o: m.LRScheduler(CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2)),
        (0.1,),
    ),
    (
        "concat",
        lambda m, o: m.ConcatScheduler(
            [
                m.LinearCyclicalScheduler(o, "lr", 0.0, 1.0, 8),
                m.CosineAnnealingScheduler(o, "lr", 1.0, 0.2, 4),
            ],
            durations=[4],
        ),
        (0.1,),
    ),
    (
        "groups",
        lambda m, o: m.ParamGroupScheduler(
            [
                m.PiecewiseLinear(o, "lr", [(0, 0.0), (5, 0.1)], param_group_index=0),
                m.LinearCyclicalScheduler(o, "lr", 0.2, 0.4, 4, param_group_index=1),
            ],
            names=["a", "b"],
        ),
        (0.1, 0.2),
    ),
    (
        "warmup-torch",
        lambda m, o: m.create_lr_scheduler_with_warmup(
            ExponentialLR(o, gamma=0.9), warmup_start_value=0.0, warmup_duration=4
        ),
        (0.1,),
    ),
    (
        "warmup-cosine",
        lambda m, o: m.create_lr_scheduler_with_warmup(
            m.CosineAnnealingScheduler(o, "lr", 0.2, 0.0, 6),
            warmup_start_value=0.0,
            warmup_duration=3,
            warmup_end_value=0.2,
        ),
        (0.2,),
    ),
]


def _values(module, engine_module, build, lrs, n_iter=25):
    opt = _optimizer(lrs)
    scheduler = build(module, opt)
    trainer = engine_module.Engine(lambda e, b: None)
    trainer.add_event_handler(engine_module.Events.ITERATION_STARTED, scheduler)
    seen = []
    trainer.add_event_handler(
        engine_module.Events.ITERATION_COMPLETED,
        lambda e: seen.extend(v for g in opt.param_groups for v in (g["lr"], g["momentum"])),
    )
    trainer.run([0] * n_iter, max_epochs=1)
    return seen


@pytest.mark.parametrize(("name", "build", "lrs"), CASES, ids=[c[0] for c in CASES])
def test_values_equal_ignite(name, build, lrs):
    ours = _values(de, __import__("distengine.engine", fromlist=["Engine"]), build, lrs)
    theirs = _values(ig, ig_engine, build, lrs)
    assert ours == pytest.approx(theirs), name


@pytest.mark.parametrize(("name", "build", "lrs"), CASES, ids=[c[0] for c in CASES])
def test_state_dict_resumes_every_scheduler(name, build, lrs):
    """Stop after k events, load the state into a fresh scheduler: the same next values."""
    opt = _optimizer(lrs)
    reference = build(de, opt)
    ref_values = []
    for _ in range(30):
        reference(None)
        ref_values.append(tuple(g["lr"] for g in opt.param_groups))
    for k in (1, 5, 13):
        opt_a = _optimizer(lrs)
        first = build(de, opt_a)
        for _ in range(k):
            first(None)
        saved = copy.deepcopy((first.state_dict(), opt_a.state_dict()))
        opt_b = _optimizer(lrs)
        second = build(de, opt_b)
        second.load_state_dict(saved[0])
        opt_b.load_state_dict(saved[1])
        rest = []
        for _ in range(30 - k):
            second(None)
            rest.append(tuple(g["lr"] for g in opt_b.param_groups))
        assert rest == ref_values[k:], (name, k)  # bitwise: the same arithmetic from the same state


def _train(tmp_path, stop_at=None, resume=False, max_epochs=3):
    """A trainer with warm-up + cosine on one group and StepLR-like decay on another."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(
        [{"params": [model.weight], "lr": 0.1}, {"params": [model.bias], "lr": 0.05}], lr=0.1
    )
    main = de.ParamGroupScheduler(
        [
            de.create_lr_scheduler_with_warmup(
                de.CosineAnnealingScheduler(opt, "lr", 0.1, 0.0, 10, param_group_index=0),
                warmup_start_value=0.0,
                warmup_duration=4,
            ),
            de.PiecewiseLinear(opt, "lr", [(0, 0.05), (7, 0.01), (20, 0.02)], param_group_index=1),
        ],
        names=["w", "b"],
    )
    momentum = de.LinearCyclicalScheduler(opt, "momentum", 0.8, 0.95, 6)

    def step(engine, batch):
        opt.zero_grad()
        loss = (model(batch) ** 2).mean()
        loss.backward()
        opt.step()
        return loss.item()

    trainer = Engine(step)
    trainer.add_event_handler(Events.ITERATION_STARTED, main)
    momentum.attach(trainer)
    seen = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: seen.append(
            (e.state.iteration, *[(g["lr"], g["momentum"]) for g in opt.param_groups])
        ),
    )
    to_save = {"trainer": trainer, "model": model, "optimizer": opt, "lr": main, "mom": momentum}
    saver = DiskSaver(str(tmp_path / "ckpt"), require_empty=False)
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(every=3), Checkpoint(to_save, saver, n_saved=2)
    )
    if stop_at is not None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
    if resume:
        latest = Checkpoint.latest(str(tmp_path / "ckpt"))
        Checkpoint.load_objects(to_load=to_save, checkpoint=latest)
    data = [torch.randn(4, 3, generator=torch.Generator().manual_seed(i)) for i in range(7)]
    trainer.run(data, max_epochs=max_epochs, seed=1)
    return seen, model


@pytest.mark.parametrize("stop_at", [4, 8, 13])
def test_checkpoint_mid_epoch_resumes_the_schedule_exactly(tmp_path, stop_at):
    """7 iterations per epoch, checkpoints every 3: the crash leaves the run up to 2
    iterations past the last checkpoint; the resumed run repeats those iterations with the
    same learning rates and momenta, then continues exactly like the uninterrupted run."""
    reference, ref_model = _train(tmp_path / "ref")
    _train(tmp_path / "run", stop_at=stop_at)
    resumed, model = _train(tmp_path / "run", resume=True)
    last_saved = stop_at // 3 * 3
    assert resumed[0][0] == last_saved + 1
    assert resumed == reference[last_saved:]
    assert torch.equal(model.weight, ref_model.weight) and torch.equal(model.bias, ref_model.bias)


def test_save_history_and_attach():
    opt = _optimizer((0.0,))
    scheduler = de.LinearCyclicalScheduler(opt, "lr", 1.0, 0.0, 4, save_history=True)
    trainer = Engine(lambda e, b: None)
    scheduler.attach(trainer)
    trainer.run([0] * 4, max_epochs=1)
    assert trainer.state.param_history["lr"] == [[1.0], [0.5], [0.0], [0.5]]


def test_simulate_values_leaves_the_real_schedulers_alone():
    opt = _optimizer((0.3,))
    torch_sched = StepLR(opt, step_size=2, gamma=0.5)
    before = copy.deepcopy((torch_sched.state_dict(), opt.state_dict()))
    values = de.LRScheduler.simulate_values(5, torch_sched)
    assert [v[1] for v in values] == pytest.approx([0.3, 0.3, 0.15, 0.15, 0.075])
    assert torch_sched.state_dict() == before[0]
    assert opt.param_groups[0]["lr"] == 0.3
    simulated = [None] * 6
    de.create_lr_scheduler_with_warmup(
        torch_sched, warmup_start_value=0.0, warmup_duration=3, output_simulated_values=simulated
    )
    assert [v[1] for v in simulated][:3] == pytest.approx([0.0, 0.15, 0.3])


def test_reduce_lr_on_plateau_state_is_plain_data(tmp_path):
    """Its state_dict holds data only: a checkpoint stays loadable with weights_only=True."""
    opt = _optimizer((1.0, 1.0))
    scheduler = de.ReduceLROnPlateauScheduler(
        opt, "loss", mode="min", patience=0, factor=0.5, param_group_index=1, min_lr=0.3
    )
    evaluator = Engine(lambda e, b: None)
    for loss in (1.0, 2.0, 2.0, 2.0):
        evaluator.state.metrics["loss"] = loss
        scheduler(evaluator)
    assert [g["lr"] for g in opt.param_groups] == [1.0, 0.3]  # group 1 only, floored
    path = tmp_path / "s.pt"
    torch.save(scheduler.state_dict(), path)
    restored = de.ReduceLROnPlateauScheduler(
        _optimizer((1.0, 1.0)), "loss", mode="min", patience=0, param_group_index=1, min_lr=0.3
    )
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.scheduler.best == 1.0 and restored.event_index == 4


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda o: de.LinearCyclicalScheduler({}, "lr", 1, 0, 4), TypeError, "param_groups"),
        (lambda o: de.LinearCyclicalScheduler(o, "lr", 1, 0, 1), ValueError, "cycle_size"),
        (
            lambda o: de.LinearCyclicalScheduler(o, "lr", 1, 0, 4, warmup_duration=2),
            ValueError,
            "monotonic=True",
        ),
        (lambda o: de.PiecewiseLinear(o, "lr", []), ValueError, "at least one value"),
        (lambda o: de.PiecewiseLinear(o, "lr", [(2, 0.1), (1, 0.2)]), ValueError, "increasing"),
        (lambda o: de.PiecewiseLinear(o, "lr", [(0.5, 0.1)]), TypeError, "integer"),
        (lambda o: de.LRScheduler(123), TypeError, "torch.optim.lr_scheduler.LRScheduler"),
        (
            lambda o: de.ConcatScheduler([de.PiecewiseLinear(o, "lr", [(0, 1.0)])], []),
            ValueError,
            "more than one",
        ),
        (
            lambda o: de.ConcatScheduler(
                [
                    de.PiecewiseLinear(o, "lr", [(0, 1.0)]),
                    de.PiecewiseLinear(_optimizer(), "lr", [(0, 1.0)]),
                ],
                [2],
            ),
            ValueError,
            "same optimizer",
        ),
        (
            lambda o: de.create_lr_scheduler_with_warmup(StepLR(o, 1), 0.0, 1),
            ValueError,
            "at least 2 events",
        ),
        (
            lambda o: de.BatchSizeScheduler([1, 2], scheduler_fn=lambda e: 2),
            TypeError,
            "DataLoader",
        ),
    ],
)
def test_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make(_optimizer())


def test_load_state_dict_checks_its_input():
    scheduler = de.LinearCyclicalScheduler(_optimizer(), "lr", 1, 0, 4)
    with pytest.raises(TypeError, match="should be a dictionary"):
        scheduler.load_state_dict([1])
    with pytest.raises(ValueError, match="'event_index' is absent"):
        scheduler.load_state_dict({})
    group = de.ParamGroupScheduler([scheduler], names=["x"])
    with pytest.raises(ValueError, match="does not correspond"):
        group.load_state_dict({"schedulers": [("y", scheduler.state_dict())]})


def test_batch_size_scheduler_refuses_auto_dataloader():
    import distengine.distributed as idist

    loader = idist.auto_dataloader(torch.utils.data.TensorDataset(torch.arange(8.0)), batch_size=2)
    with pytest.raises(ValueError, match="auto_dataloader"):
        de.BatchSizeScheduler(loader, scheduler_fn=lambda e: 4)
    plain = torch.utils.data.DataLoader(list(range(20)), batch_size=2)
    scheduler = de.BatchSizeScheduler(plain, scheduler_fn=lambda e: 2 + e, save_history=True)
    trainer = Engine(lambda e, b: None)
    scheduler.attach(trainer)
    trainer.run([0] * 3, max_epochs=3)
    assert plain.batch_sampler.batch_size == 4
    assert trainer.state.param_history["batch_size"] == [2, 3, 4]


STATE_CASES = [
    ("PiecewiseLinearStateScheduler", dict(milestones_values=[(2, 1.0), (6, 0.2), (9, 0.5)])),
    ("ExpStateScheduler", dict(initial_value=2.0, gamma=0.8)),
    ("StepStateScheduler", dict(initial_value=1.0, gamma=0.5, step_size=3)),
    ("MultiStepStateScheduler", dict(initial_value=1.0, gamma=0.1, milestones=[2, 5, 7])),
]


@pytest.mark.parametrize(("cls", "kwargs"), STATE_CASES, ids=[c[0] for c in STATE_CASES])
def test_state_schedulers_equal_ignite_and_resume_with_the_engine(cls, kwargs):
    import ignite.handlers.state_param_scheduler as ig_state

    import distengine.handlers as handlers

    ours = getattr(handlers, cls).simulate_values(12, param_name="w", **kwargs)
    theirs = getattr(ig_state, cls).simulate_values(12, param_name="w", **kwargs)
    assert ours == theirs

    def make():
        engine = Engine(lambda e, b: seen.append(e.state.w))  # reads the value set last time
        scheduler = getattr(handlers, cls)(param_name="w", create_new=True, **kwargs)
        scheduler.attach(engine)
        return engine, scheduler

    seen = []
    engine, _ = make()
    engine.run([0] * 5, max_epochs=2)
    reference = list(seen)

    seen = []
    engine, scheduler = make()
    saved = []

    def crash(e):  # save as a Checkpoint handler would, then die
        saved.extend(copy.deepcopy((e.state_dict(), scheduler.state_dict())))
        raise RuntimeError("crash")

    engine.add_event_handler(Events.ITERATION_COMPLETED(once=6), crash)
    with pytest.raises(RuntimeError, match="crash"):
        engine.run([0] * 5, max_epochs=2)
    assert saved[0]["w"] == engine.state.w == reference[6]  # the value travels with the engine

    seen = []
    engine, scheduler = make()
    engine.load_state_dict(saved[0])
    scheduler.load_state_dict(saved[1])
    engine.run([0] * 5, max_epochs=2)
    assert seen == reference[6:]


def test_state_scheduler_attach_rules():
    import distengine.handlers as handlers

    engine = Engine(lambda e, b: None)
    engine.state.w = 1.0
    with pytest.raises(ValueError, match="already exists"):
        handlers.ExpStateScheduler(1.0, 0.5, param_name="w", create_new=True).attach(engine)
    with pytest.warns(UserWarning, match="will create it"):
        handlers.ExpStateScheduler(1.0, 0.5, param_name="v").attach(engine)
    with pytest.raises(ValueError, match="callable"):
        handlers.LambdaStateScheduler(3, param_name="x")
