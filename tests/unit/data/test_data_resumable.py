"""The resumable-sampler protocol: declared, checked by the engine, and enough to resume."""

import pytest
import torch

from distengine import Engine, Events
from distengine.data import ResumableDistributedSampler, ResumableSampler, check_resumable_sampler
from distengine.data.resumable import RESUMABLE_SAMPLER_MEMBERS


class Sequential:
    """A resumable sampler written against the protocol only: indices in order, one rank."""

    def __init__(self, n, global_batch_size):
        self.n, self.global_batch_size = n, global_batch_size
        self.calls = []
        self.start = 0

    @property
    def pass_length(self):
        return -(-self.n // self.global_batch_size) * self.global_batch_size

    @property
    def first_irregular_batch(self):
        return self.pass_length // self.global_batch_size

    def set_seed(self, seed):
        self.calls.append(("set_seed", seed))

    def set_epoch(self, epoch):
        self.calls.append(("set_epoch", epoch))

    def set_start(self, global_samples):
        self.calls.append(("set_start", global_samples))
        self.start = global_samples

    def batch_geometry(self, k):
        return self.global_batch_size, 0, 1.0

    def global_batch_digest(self, k):
        return k

    def __iter__(self):
        return iter(range(self.start, self.n))

    def __len__(self):
        return self.n - self.start


def _without(member):
    """A ``Sequential`` whose class lacks ``member``."""
    namespace = {
        name: value
        for name, value in vars(Sequential).items()
        if name not in (member, "__dict__", "__weakref__")
    }
    cls = type(f"No_{member}", (), namespace)
    sampler = cls(8, 2)
    if member == "global_batch_size":
        del sampler.global_batch_size
    return sampler


def test_the_library_sampler_implements_the_protocol():
    sampler = ResumableDistributedSampler(10, global_batch_size=4, num_replicas=1, rank=0)
    assert isinstance(sampler, ResumableSampler)
    assert check_resumable_sampler(sampler) is sampler
    assert all(hasattr(ResumableSampler, m) for m in RESUMABLE_SAMPLER_MEMBERS)
    assert len(RESUMABLE_SAMPLER_MEMBERS) == 8


@pytest.mark.parametrize("member", RESUMABLE_SAMPLER_MEMBERS)
def test_a_missing_member_is_named(member):
    sampler = _without(member)
    assert not isinstance(sampler, ResumableSampler)
    with pytest.raises(TypeError, match=rf"No_{member} lacks {member}$"):
        check_resumable_sampler(sampler)


@pytest.mark.parametrize(
    "member", [m for m in RESUMABLE_SAMPLER_MEMBERS if m not in ("global_batch_size", "set_start")]
)
def test_the_engine_refuses_a_sampler_that_claims_the_role_without_every_member(member):
    # an int global_batch_size and a callable set_start claim the role (as before); the
    # rest of the protocol used to fail later, with an AttributeError mid-run
    loader = torch.utils.data.DataLoader(list(range(8)), batch_size=2, sampler=_without(member))
    engine = Engine(lambda e, b: None)
    with pytest.raises(TypeError, match=rf"lacks {member}"):
        engine.run(loader, max_epochs=1)


def test_members_of_the_wrong_kind_are_named():
    with pytest.raises(TypeError, match="global_batch_size must be an int, got float"):
        check_resumable_sampler(_Fixed(Sequential(8, 2), global_batch_size=2.0))
    with pytest.raises(TypeError, match="batch_geometry must be callable"):
        check_resumable_sampler(_Fixed(Sequential(8, 2), batch_geometry=None))


class _Fixed(Sequential):
    def __init__(self, base, **overrides):
        super().__init__(base.n, base.global_batch_size)
        for name, value in overrides.items():
            setattr(self, name, value)


def test_a_sampler_of_the_protocol_resumes_mid_pass():
    def make():
        sampler = Sequential(10, 2)
        loader = torch.utils.data.DataLoader(list(range(10)), batch_size=2, sampler=sampler)
        return sampler, loader

    seen = []
    sampler, loader = make()
    engine = Engine(lambda e, b: seen.append(b.tolist()))
    engine.add_event_handler(Events.ITERATION_COMPLETED(once=2), lambda e: e.terminate())
    engine.run(loader, max_epochs=1, seed=7)
    assert seen == [[0, 1], [2, 3]]
    assert sampler.calls == [("set_seed", 7), ("set_epoch", 0), ("set_start", 0)]
    state = engine.state_dict()
    assert state["cursor"] == 4

    sampler, loader = make()
    resumed = Engine(lambda e, b: seen.append(b.tolist()))
    resumed.load_state_dict(state)
    resumed.run(loader)
    assert sampler.calls == [("set_seed", 7), ("set_epoch", 0), ("set_start", 4)]
    assert seen[2:] == [[4, 5], [6, 7], [8, 9]]
