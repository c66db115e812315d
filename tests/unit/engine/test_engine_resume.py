"""Exact in-process resume (one process): stop anywhere, reload, finish — bitwise equal."""

import collections
import copy

import pytest
import torch

from distengine.distributed import auto_dataloader
from distengine.engine import Engine, Events, create_supervised_trainer


class NoisyDataset(torch.utils.data.Dataset):
    """Random augmentation (noise) per read; every read is logged where data is read."""

    def __init__(self, n, log_path):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 6, generator=g)
        self.y = torch.randn(n, 1, generator=g)
        self.log_path = log_path

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        with open(self.log_path, "a") as f:
            f.write(f"{i}\n")
        return self.x[i] + 0.1 * torch.rand(6), self.y[i], i


def _read_log(path):
    try:
        with open(path) as f:
            return [int(line) for line in f]
    except FileNotFoundError:
        return []


def _build(init_seed):
    torch.manual_seed(init_seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    trainer = create_supervised_trainer(model, opt, torch.nn.functional.mse_loss)
    return model, opt, trainer


def _assert_bitwise(a_model, a_opt, b_model, b_opt):
    for (na, pa), (nb, pb) in zip(a_model.state_dict().items(), b_model.state_dict().items()):
        assert na == nb and torch.equal(pa, pb), na
    sa, sb = a_opt.state_dict()["state"], b_opt.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name in sa[k]:
            assert torch.equal(torch.as_tensor(sa[k][name]), torch.as_tensor(sb[k][name])), (
                k,
                name,
            )


RUN = dict(max_epochs=3, seed=5)


def _reference(tmp_path, num_workers):
    log = tmp_path / "ref.log"
    model, opt, trainer = _build(0)
    loader = auto_dataloader(NoisyDataset(44, log), batch_size=8, num_workers=num_workers)
    trained = []  # sample indices, one list per iteration
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: trained.append(e.state.batch[2].tolist())
    )
    trainer.run(loader, **RUN)
    return model, opt, trained


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("stop_at", [3, 6, 12, 15])
def test_stop_and_resume_is_bitwise_identical(tmp_path, num_workers, stop_at):
    ref_model, ref_opt, ref_log = _reference(tmp_path, num_workers)
    # 44 samples, global batch 8: 6 batches per pass, the last one of 4 samples.
    model, opt, trainer = _build(0)
    first_log = tmp_path / "first.log"
    loader = auto_dataloader(NoisyDataset(44, first_log), batch_size=8, num_workers=num_workers)
    saved = {}

    @trainer.on(Events.ITERATION_COMPLETED(once=stop_at))
    def stop(engine):
        saved["engine"] = copy.deepcopy(engine.state_dict())
        saved["model"] = copy.deepcopy(model.state_dict())
        saved["opt"] = copy.deepcopy(opt.state_dict())
        engine.terminate()

    trainer.run(loader, **RUN)
    assert saved["engine"]["iteration"] == stop_at  # the fault fired where intended
    pass_batches = saved["engine"]["pass_batches"]
    if stop_at % 6:
        assert 0 < pass_batches < 6, "the resume point must be mid-pass"

    model2, opt2, trainer2 = _build(999)  # different RNG: the restore must fix it
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    trainer2.load_state_dict(saved["engine"])
    second_log = tmp_path / "second.log"
    loader2 = auto_dataloader(NoisyDataset(44, second_log), batch_size=8, num_workers=num_workers)
    state = trainer2.run(loader2, **RUN)
    assert state.iteration == 18
    _assert_bitwise(ref_model, ref_opt, model2, opt2)
    # no skipped sample is fetched: the resumed run read exactly what the reference trained
    # on after the stop point (as a multiset, since workers interleave their reads)
    expected = sum(ref_log[stop_at:], [])
    assert collections.Counter(_read_log(second_log)) == collections.Counter(expected)
    if num_workers == 0:
        assert _read_log(second_log) == expected


def test_resume_without_restore_differs(tmp_path):
    """Negative control: skipping load_state_dict breaks the comparison above."""
    ref_model, ref_opt, _ = _reference(tmp_path, 0)
    model, opt, trainer = _build(0)
    saved = {}

    @trainer.on(Events.ITERATION_COMPLETED(once=8))
    def stop(engine):
        saved["model"] = copy.deepcopy(model.state_dict())
        saved["opt"] = copy.deepcopy(opt.state_dict())
        engine.terminate()

    trainer.run(auto_dataloader(NoisyDataset(44, tmp_path / "a.log"), batch_size=8), **RUN)
    model2, opt2, trainer2 = _build(999)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    trainer2.run(
        auto_dataloader(NoisyDataset(44, tmp_path / "b.log"), batch_size=8), max_epochs=2, seed=5
    )
    with pytest.raises(AssertionError):
        _assert_bitwise(ref_model, ref_opt, model2, opt2)


def test_seed_is_saved_and_wins():
    eng = Engine(lambda e, b: b)
    eng.run(range(6), max_epochs=2)
    sd = eng.state_dict()
    assert isinstance(sd["seed"], int)
    other = Engine(lambda e, b: b)
    other.load_state_dict({**sd, "max_epochs": 3})
    with pytest.raises(ValueError, match="seed"):
        other.run(range(6), seed=sd["seed"] + 1)
    assert other.run(range(6), seed=sd["seed"]).seed == sd["seed"]


def test_data_order_is_a_function_of_seed_and_pass():
    ds = torch.utils.data.TensorDataset(torch.arange(20))

    def order(seed, epochs):
        seen = []
        Engine(lambda e, b: seen.extend(b[0].tolist())).run(
            auto_dataloader(ds, batch_size=4), max_epochs=epochs, seed=seed
        )
        return seen

    a, b = order(3, 2), order(3, 2)
    assert a == b and sorted(a[:20]) == list(range(20)) and a[:20] != a[20:]
    assert order(4, 1) != a[:20]


def test_state_dict_keys_and_cursor():
    ds = torch.utils.data.TensorDataset(torch.arange(20))
    eng = Engine(lambda e, b: b)
    eng.add_event_handler(Events.ITERATION_COMPLETED(once=7), lambda e: e.terminate())
    eng.run(auto_dataloader(ds, batch_size=4), max_epochs=3, seed=1)
    sd = eng.state_dict()
    assert {"iteration", "epoch_length", "max_epochs", "seed", "data_pass", "cursor"} <= set(sd)
    assert (sd["iteration"], sd["data_pass"], sd["cursor"]) == (7, 1, 8)


@pytest.mark.parametrize(
    "bad,exc,match",
    [
        ([1, 2], TypeError, "should be a dictionary"),
        ({"iteration": 1, "max_epochs": 2}, ValueError, "'epoch_length' is absent"),
        ({"iteration": 1, "epoch_length": 4}, ValueError, "exactly one of"),
        ({"iteration": 30, "epoch_length": 4, "max_epochs": 2}, ValueError, "start epoch"),
        ({"iteration": 1, "epoch": 1, "epoch_length": 4, "max_epochs": 2}, ValueError, "only one"),
        ({"iteration": 1, "epoch_length": None, "max_epochs": 2}, ValueError, "positive"),
        ({"iteration": 1, "epoch_length": 0, "max_epochs": 2}, ValueError, "positive"),
        ({"iteration": -1, "epoch_length": 4, "max_epochs": 2}, ValueError, "iteration"),
    ],
)
def test_load_state_dict_rejects_bad_input(bad, exc, match):
    with pytest.raises(exc, match=match):
        Engine(lambda e, b: b).load_state_dict(bad)


def test_different_epoch_length_on_run_rejected():
    eng = Engine(lambda e, b: b)
    eng.load_state_dict({"iteration": 3, "epoch_length": 4, "max_epochs": 2})
    with pytest.raises(ValueError, match="epoch_length should be same as in the state"):
        eng.run(range(4), epoch_length=5)


def test_ignite_style_state_dict_resumes_at_epoch():
    seen = []
    eng = Engine(lambda e, b: seen.append((e.state.epoch, b)))
    eng.load_state_dict({"epoch": 2, "epoch_length": 3, "max_epochs": 3})
    eng.run(range(3))
    assert seen == [(3, 0), (3, 1), (3, 2)]


def test_epoch_length_shorter_than_data_keeps_pass():
    ds = torch.utils.data.TensorDataset(torch.arange(12))
    ref = []
    Engine(lambda e, b: ref.extend(b[0].tolist())).run(
        auto_dataloader(ds, batch_size=2), max_epochs=4, epoch_length=4, seed=2
    )
    got = []
    eng = Engine(lambda e, b: got.extend(b[0].tolist()))
    eng.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda e: e.terminate())
    eng.run(auto_dataloader(ds, batch_size=2), max_epochs=4, epoch_length=4, seed=2)
    sd = eng.state_dict()
    assert (sd["data_pass"], sd["pass_batches"]) == (1, 2)  # epoch 2 ended mid-pass
    eng2 = Engine(lambda e, b: got.extend(b[0].tolist()))
    eng2.load_state_dict(sd)
    eng2.run(auto_dataloader(ds, batch_size=2))
    assert got == ref


def test_resume_from_last_iteration_fires_pending_epoch_end():
    """Saved at the run's last iteration (before EPOCH_COMPLETED): the resumed run fires
    the pending EPOCH_COMPLETED and COMPLETED instead of starting over."""
    saved = {}
    eng = Engine(lambda e, b: b)

    @eng.on(Events.ITERATION_COMPLETED(once=8))
    def stop(engine):
        saved["sd"] = engine.state_dict()
        engine.terminate()

    eng.run(range(4), max_epochs=2, seed=0)
    events = []
    eng2 = Engine(lambda e, b: events.append(("it", e.state.iteration)))
    for name in ("EPOCH_STARTED", "EPOCH_COMPLETED", "COMPLETED"):
        eng2.add_event_handler(
            getattr(Events, name), lambda e, n=name: events.append((n, e.state.epoch))
        )
    eng2.load_state_dict(saved["sd"])
    state = eng2.run(range(4))
    assert events == [("EPOCH_STARTED", 2), ("EPOCH_COMPLETED", 2), ("COMPLETED", 2)]
    assert (state.epoch, state.iteration) == (2, 8)


def test_ignite_engine_replays_wrong_batches_where_we_do_not():
    """The defect distengine fixes: Ignite resumes mid-epoch with a fresh iterator."""
    import ignite.engine as ignite_engine  # the oracle is a test dependency: no silent skip

    ds = torch.utils.data.TensorDataset(torch.arange(24))

    def seen_after_resume(engine_cls, events, loader_fn, **seed):
        ref, got, saved = [], [], {}
        engine_cls(lambda e, b: ref.extend(b[0].tolist())).run(loader_fn(), max_epochs=2, **seed)
        first = engine_cls(lambda e, b: None)
        first.add_event_handler(
            events.ITERATION_COMPLETED(once=3),
            lambda e: (saved.update(sd=e.state_dict()), e.terminate()),
        )
        first.run(loader_fn(), max_epochs=2, **seed)
        second = engine_cls(lambda e, b: got.extend(b[0].tolist()))
        second.load_state_dict(saved["sd"])
        second.run(loader_fn(), max_epochs=2)
        return ref[3 * 4 :], got

    def ignite_loader():
        return torch.utils.data.DataLoader(
            ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)
        )

    expected, got = seen_after_resume(ignite_engine.Engine, ignite_engine.Events, ignite_loader)
    assert got != expected  # Ignite trains on other batches after the resume
    expected, got = seen_after_resume(
        Engine, Events, lambda: auto_dataloader(ds, batch_size=4), seed=0
    )
    assert got == expected


def test_evaluator_inside_trainer_does_not_shift_trainer_rng(tmp_path):
    """Running an evaluator (its own loader, seeded augmentation, a drawn seed) inside a
    trainer handler leaves the trainer's random stream, hence its weights, unchanged."""
    from distengine.engine import create_supervised_evaluator

    def train(with_eval):
        model, opt, trainer = _build(0)
        if with_eval:
            evaluator = create_supervised_evaluator(model)
            eval_loader = auto_dataloader(
                NoisyDataset(20, tmp_path / "eval.log"), batch_size=4, shuffle=False
            )
            trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda: evaluator.run(eval_loader))
        trainer.run(
            auto_dataloader(NoisyDataset(44, tmp_path / "t.log"), batch_size=8),
            max_epochs=2,
            seed=5,
        )
        return model, opt

    a_model, a_opt = train(False)
    b_model, b_opt = train(True)
    assert (tmp_path / "eval.log").exists()  # the evaluator did read (augmented) data
    _assert_bitwise(a_model, a_opt, b_model, b_opt)


@pytest.mark.parametrize(
    "save_event", ["ITERATION_COMPLETED", "GET_BATCH_STARTED", "EPOCH_STARTED"]
)
def test_resume_after_terminate_epoch_keeps_epochs(save_event):
    """Epochs ended early by terminate_epoch() are not derivable from the iteration: the
    saved epoch state puts the resumed run on the same epochs, iterations and batches."""

    def make(log):
        eng = Engine(lambda e, b: log.append(("it", e.state.epoch, e.state.iteration, b)))
        for name in ("EPOCH_STARTED", "EPOCH_COMPLETED", "COMPLETED"):
            eng.add_event_handler(
                getattr(Events, name), lambda e, n=name: log.append((n, e.state.epoch))
            )
        return eng

    ref = []
    eng = make(ref)
    eng.add_event_handler(Events.ITERATION_COMPLETED(once=3), lambda e: e.terminate_epoch())
    eng.run(range(10), max_epochs=3, seed=0)

    first, saved = [], {}
    eng = make(first)
    eng.add_event_handler(Events.ITERATION_COMPLETED(once=3), lambda e: e.terminate_epoch())
    at = {"ITERATION_COMPLETED": 5, "GET_BATCH_STARTED": 5, "EPOCH_STARTED": 2}[save_event]

    def save(engine):
        counter = engine.state.epoch if save_event == "EPOCH_STARTED" else engine.state.iteration
        if counter == at and "sd" not in saved:
            saved["sd"] = copy.deepcopy(engine.state_dict())
            saved["n"] = len(first)
            engine.terminate()

    eng.add_event_handler(getattr(Events, save_event), save)
    eng.run(range(10), max_epochs=3, seed=0)
    second = []
    eng2 = make(second)
    eng2.load_state_dict(saved["sd"])
    eng2.run(range(10))
    resumed_from = (
        [x for x in ref if x[0] == "it"].index([x for x in first[: saved["n"]] if x[0] == "it"][-1])
        + 1
        if save_event != "EPOCH_STARTED"
        else None
    )
    ref_its = [x for x in ref if x[0] == "it"]
    got_its = [x for x in second if x[0] == "it"]
    if resumed_from is not None:
        assert got_its == ref_its[resumed_from:]
    assert [x for x in second if x[0] == "COMPLETED"] == [x for x in ref if x[0] == "COMPLETED"]
    assert got_its[-1] == ref_its[-1]


def test_keyboard_interrupt_is_not_swallowed_by_exception_handlers():
    def step(engine, batch):
        if engine.state.iteration == 2:
            raise KeyboardInterrupt
        return batch

    eng = Engine(step)
    seen = []
    eng.add_event_handler(Events.EXCEPTION_RAISED, lambda e, exc: seen.append(exc))
    with pytest.raises(KeyboardInterrupt):
        eng.run(range(4))
    assert seen == []


def test_abandoning_an_interrupted_run_fires_no_exception_handler():
    eng = Engine(lambda e, b: b)
    seen = []
    eng.add_event_handler(Events.EXCEPTION_RAISED, lambda e, exc: seen.append(type(exc).__name__))
    eng.add_event_handler(Events.ITERATION_COMPLETED(once=2), lambda e: e.interrupt())
    eng.run(range(4), max_epochs=2, seed=0)
    eng.load_state_dict(
        {"iteration": 0, "epoch_length": 4, "max_epochs": 2}
    )  # drops the paused run
    eng.run(range(4))
    assert seen == []


def test_run_identity_is_drawn_per_run_and_carried_by_state_dict():
    torch.manual_seed(0)
    a = Engine(lambda e, b: None)
    a.run(range(4), max_epochs=1, seed=3)
    torch.manual_seed(0)
    b = Engine(lambda e, b: None)
    b.run(range(4), max_epochs=1, seed=3)
    # two runs seeded alike are still two runs
    assert isinstance(a.state.run_id, str) and len(a.state.run_id) == 16
    assert a.state.run_id != b.state.run_id

    stopped = Engine(lambda e, b: e.terminate() if e.state.iteration == 2 else None)
    stopped.run(range(4), max_epochs=2, seed=1)
    resumed = Engine(lambda e, b: None)
    resumed.load_state_dict(stopped.state_dict())
    assert resumed.state.run_id == stopped.state.run_id
    resumed.run(range(4))
    assert resumed.state.run_id == stopped.state.run_id  # a resume is the same run

    first = a.state.run_id
    a.run(range(4), max_epochs=1, seed=3)  # done, so a new run starts
    assert a.state.run_id != first


def test_state_dict_without_run_identity_gets_one_at_run():
    e = Engine(lambda e, b: None)
    e.load_state_dict({"iteration": 2, "epoch_length": 4, "max_epochs": 2})
    assert e.state.run_id is None
    e.run(range(4))
    assert isinstance(e.state.run_id, str) and len(e.state.run_id) == 16
    with pytest.raises(ValueError, match="run_id"):
        Engine(lambda e, b: None).load_state_dict(
            {"iteration": 2, "epoch_length": 4, "max_epochs": 2, "run_id": 5}
        )
