"""``DataPass`` on its own (``engine/datapass.py``): which data pass it is in, how far, what
its ``state_dict`` records, and how it restarts mid-pass — over a sequence, a plain
iterable, a loader with a ``ResumableDistributedSampler`` and no data at all. The engine
sets ``batches`` after each completed iteration; these tests do the same by hand."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from distengine.data import ResumableDistributedSampler
from distengine.engine.datapass import DataPass, data_length, find_resumable_sampler


class CountingSequence(Sequence):
    """A sequence (a ``collections.abc.Sequence``) that records which items were read."""

    def __init__(self, n):
        self.n, self.reads = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        self.reads.append(i)
        return i


class CountingIterable:
    """An iterable (not a sequence) that counts the iterators made and the items fetched."""

    def __init__(self, n, sized=True):
        self.n, self.sized, self.iters, self.fetched = n, sized, 0, 0

    def __len__(self):
        if not self.sized:
            raise TypeError("no length")
        return self.n

    def __iter__(self):
        self.iters += 1
        for i in range(self.n):
            self.fetched += 1
            yield i


class CountingLoader(DataLoader):
    """A DataLoader that counts the iterators made (each would start its workers)."""

    iters = 0

    def __iter__(self):
        self.iters += 1
        return super().__iter__()


def _loader(n=10, gbs=4):
    s = ResumableDistributedSampler(n, global_batch_size=gbs, num_replicas=1, rank=0, shuffle=False)
    return CountingLoader(list(range(n)), batch_size=s.loader_batch_size, sampler=s), s


def _bound(data):
    dp = DataPass()
    dp.bind(data)
    return dp


def _flat(batches):
    return [x for b in batches for x in (b.tolist() if isinstance(b, torch.Tensor) else [b])]


# --- what it finds in the data --------------------------------------------------------------


def test_find_resumable_sampler_and_data_length():
    loader, s = _loader()
    assert find_resumable_sampler(loader) is s
    assert find_resumable_sampler(DataLoader(list(range(4)), batch_size=2)) is None
    assert find_resumable_sampler([1, 2]) is None
    assert data_length(loader) == 3
    assert data_length([1, 2]) == 2
    assert data_length(CountingIterable(3, sized=False)) is None
    assert data_length(iter([1])) is None


# --- position and state_dict ----------------------------------------------------------------


def test_fresh_pass_over_a_sequence_and_its_state():
    data = CountingSequence(5)
    dp = _bound(data)
    assert (dp.length, dp.sampler, dp.cursor, dp.global_batch_size) == (5, None, None, None)
    assert list(dp.start(None, None, new_pass=False)) == [0, 1, 2, 3, 4]
    dp.batches = 2
    assert dp.state_dict() == {
        "data_pass": 0,
        "cursor": None,
        "pass_batches": 2,
        "data_length": 5,
        "global_batch_size": None,
    }


def test_new_pass_counts_passes_and_restarts_the_batches():
    dp = _bound([10, 11, 12])
    list(dp.start(None, None, new_pass=False))
    dp.batches = 3
    assert list(dp.start(None, None, new_pass=True)) == [10, 11, 12]
    assert dp.state_dict()["data_pass"] == 1 and dp.batches == 0
    list(dp.start(None, None, new_pass=True))
    assert dp.state_dict()["data_pass"] == 2


def test_resume_mid_pass_over_a_sequence_reads_only_the_rest():
    data = CountingSequence(5)
    dp = _bound(data)
    dp.load(data_pass=3, pass_batches=2, cursor=None, length=5)
    assert list(dp.start(None, None, new_pass=False)) == [2, 3, 4]
    assert data.reads == [2, 3, 4]  # the first two are not read at all
    assert dp.state_dict()["data_pass"] == 3 and dp.batches == 2
    # applied once: the next pass starts at its beginning
    assert list(dp.start(None, None, new_pass=True)) == [0, 1, 2, 3, 4]
    assert dp.state_dict()["data_pass"] == 4


def test_resume_mid_pass_over_an_iterable_fetches_and_drops_with_a_warning():
    data = CountingIterable(5)
    dp = _bound(data)
    dp.load(data_pass=1, pass_batches=3, cursor=None, length=5)
    with pytest.warns(UserWarning, match="fetching and dropping 3 batches"):
        it = dp.start(None, None, new_pass=False)
    assert list(it) == [3, 4]
    assert data.fetched == 5


def test_resume_at_the_end_of_a_pass_makes_no_iterator():
    data = CountingIterable(4)
    dp = _bound(data)
    dp.load(data_pass=2, pass_batches=4, cursor=None, length=4)
    assert list(dp.start(None, None, new_pass=False)) == []
    assert data.iters == 0  # nothing fetched, so the data draws nothing from the RNG
    assert list(dp.start(None, None, new_pass=True)) == [0, 1, 2, 3]
    assert dp.state_dict()["data_pass"] == 3


def test_a_loaded_position_reports_itself_before_data_is_bound():
    dp = DataPass()
    dp.load(data_pass=2, pass_batches=1, cursor=4, length=3, global_batch_size=4)
    assert dp.cursor == 4
    assert dp.state_dict() == {
        "data_pass": 2,
        "cursor": 4,
        "pass_batches": 1,
        "data_length": 3,
        "global_batch_size": 4,
    }


def test_abandoned_pass_is_saved_as_the_start_of_the_next():
    dp = _bound([1, 2, 3])
    list(dp.start(None, None, new_pass=False))
    dp.batches = 1
    dp.abandon_pass()
    state = dp.state_dict()
    assert (state["data_pass"], state["pass_batches"], state["cursor"]) == (1, 0, None)
    assert list(dp.start(None, None, new_pass=False)) == [1, 2, 3]  # a new pass anyway
    assert dp.state_dict()["data_pass"] == 1 and dp.batches == 0


def test_reset_forgets_a_loaded_position():
    dp = _bound([1, 2, 3])
    dp.load(data_pass=5, pass_batches=2, cursor=None, length=3)
    dp.reset()
    assert list(dp.start(None, None, new_pass=False)) == [1, 2, 3]
    assert dp.state_dict()["data_pass"] == 0 and dp.batches == 0


# --- with a resumable sampler ---------------------------------------------------------------


def test_sampler_is_driven_by_seed_pass_and_cursor():
    loader, s = _loader(n=10, gbs=4)
    dp = _bound(loader)
    assert dp.global_batch_size == 4 and dp.cursor == 0
    dp.load(data_pass=2, pass_batches=1, cursor=4, length=3, global_batch_size=4)
    dp.check_shape(explicit_epoch_length=False)  # same shape: accepted
    batches = list(dp.start(seed=7, epoch_length=None, new_pass=False))
    assert (s.seed, s.epoch, s.start) == (7, 2, 4)
    assert _flat(batches) == [4, 5, 6, 7, 8, 9]  # unshuffled: the samples after the cursor
    assert dp.batches == 1
    assert dp.irregular_from == s.first_irregular_batch == 2  # the short last batch
    dp.batches = 3
    assert dp.cursor == 12 == s.pass_length  # in global samples, capped at the pass


def test_sampler_cursor_off_the_batch_grid_rounds_down_with_a_warning():
    loader, s = _loader(n=10, gbs=4)
    dp = _bound(loader)
    dp.load(data_pass=0, pass_batches=1, cursor=6, length=3, global_batch_size=4)
    with pytest.warns(UserWarning, match="cursor 6 is not a multiple .* resuming at 4"):
        batches = list(dp.start(seed=None, epoch_length=None, new_pass=False))
    assert s.start == 4 and _flat(batches) == [4, 5, 6, 7, 8, 9]


def test_sampler_saved_at_the_end_of_a_pass_starts_no_iterator():
    loader, s = _loader(n=8, gbs=4)
    dp = _bound(loader)
    dp.load(data_pass=1, pass_batches=2, cursor=8, length=2, global_batch_size=4)
    assert list(dp.start(seed=None, epoch_length=None, new_pass=False)) == []
    assert loader.iters == 0  # no iterator, so no workers, for the finished pass
    assert _flat(dp.start(seed=None, epoch_length=None, new_pass=True)) == list(range(8))
    assert (s.epoch, s.start, dp.state_dict()["cursor"]) == (2, 0, 0)


def test_abandoned_pass_with_a_sampler_saves_cursor_zero():
    loader, _ = _loader()
    dp = _bound(loader)
    list(dp.start(seed=None, epoch_length=None, new_pass=False))
    dp.batches = 1
    dp.abandon_pass()
    assert dp.state_dict()["cursor"] == 0


def test_plain_sampler_gets_set_epoch_with_the_pass():
    ds = list(range(6))
    sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=0)
    dp = _bound(DataLoader(ds, batch_size=2, sampler=sampler))
    dp.load(data_pass=4, pass_batches=0, cursor=None, length=3)
    list(dp.start(None, None, new_pass=False))
    assert sampler.epoch == 4
    list(dp.start(None, None, new_pass=True))
    assert sampler.epoch == 5


# --- shape checks ---------------------------------------------------------------------------


def test_a_position_over_data_of_another_length_is_refused_naming_both():
    dp = DataPass()
    dp.load(data_pass=0, pass_batches=1, cursor=None, length=5)
    dp.bind([0] * 6)
    with pytest.raises(
        ValueError, match="had 5 batches per pass, the data given to run\\(\\) has 6"
    ):
        dp.check_shape(explicit_epoch_length=False)
    dp.check_shape(explicit_epoch_length=True)  # chosen on purpose: accepted


def test_a_position_with_another_global_batch_is_refused_naming_both():
    loader, _ = _loader(n=12, gbs=4)
    dp = DataPass()
    dp.load(data_pass=0, pass_batches=1, cursor=6, length=3, global_batch_size=6)
    dp.bind(loader)
    with pytest.raises(
        ValueError, match="global batch of 6 samples, the data given to run\\(\\) has 4"
    ):
        dp.check_shape(explicit_epoch_length=False)


def test_no_loaded_position_checks_nothing():
    dp = _bound([0] * 6)
    dp.check_shape(explicit_epoch_length=False)


# --- Ignite's counters only, hooks, no data -------------------------------------------------


@pytest.mark.parametrize(("iteration", "data_pass", "rest"), [(7, 2, [1, 2]), (3, 1, [0, 1, 2])])
def test_ignite_iteration_maps_to_pass_and_batch(iteration, data_pass, rest):
    dp = _bound([0, 1, 2])
    dp.load(data_pass=0, pass_batches=0, cursor=None, from_iteration=iteration)
    assert list(dp.start(None, None, new_pass=False)) == rest
    assert dp.state_dict()["data_pass"] == data_pass


def test_ignite_iteration_over_data_without_length_is_one_pass():
    data = CountingIterable(6, sized=False)
    dp = _bound(data)
    dp.load(data_pass=0, pass_batches=0, cursor=None, from_iteration=4)
    with pytest.warns(UserWarning, match="dropping 4 batches"):
        assert list(dp.start(None, None, new_pass=False)) == [4, 5]
    assert dp.state_dict()["data_pass"] == 0


def test_pass_hook_sees_the_pass_and_runs_after_the_first_fetch():
    data = CountingIterable(4)
    dp = _bound(data)
    dp.load(data_pass=1, pass_batches=0, cursor=None, length=4)
    calls, after = [], []

    def hook(d, data_pass, skip):
        calls.append((d, data_pass, skip))
        return (lambda: after.append(data.fetched)), False

    it = dp.start(None, None, new_pass=True, pass_hook=hook)
    assert calls == [(data, 2, 0)] and after == []
    assert next(it) == 0
    assert after == [1]  # ran once the first batch had been fetched, not before
    assert list(it) == [1, 2, 3] and after == [1]


def test_pass_hook_that_skipped_already_gets_the_data_as_is():
    data = CountingIterable(4)
    dp = _bound(data)
    dp.load(data_pass=0, pass_batches=2, cursor=None, length=4)
    it = dp.start(None, None, new_pass=False, pass_hook=lambda d, p, k: (None, True))
    assert list(it) == [0, 1, 2, 3]  # no fetch-and-drop: the hook made the data start there
    assert dp.batches == 2


def test_no_data_yields_epoch_length_nones():
    dp = _bound(None)
    assert (dp.length, dp.sampler) == (None, None)
    assert list(dp.start(None, 3, new_pass=False)) == [None, None, None]
