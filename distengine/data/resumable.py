"""The resumable-sampler protocol: what the engine asks of a sampler to resume mid-pass.

The engine recognises a resumable sampler in the data it runs on (a DataLoader's
``batch_sampler.sampler``, ``batch_sampler`` or ``sampler``) by the two members that claim
the role, an int ``global_batch_size`` and a callable ``set_start``; it then drives it
through every member of :class:`ResumableSampler`, and :func:`check_resumable_sampler`
refuses one that lacks any of them, naming what is missing. The engine's uses:

- when a data pass starts: ``set_seed(seed)`` (the run's seed), ``set_epoch(data_pass)``,
  ``set_start(global_samples)`` (a multiple of ``global_batch_size``, at most
  ``pass_length``);
- the position: ``cursor = batches * global_batch_size``, capped at ``pass_length``;
- from batch ``first_irregular_batch`` on, ``batch_geometry(k)`` gives ``state.batch_padding``
  and ``state.batch_loss_scale``;
- the sync check compares ``global_batch_digest(k)`` across ranks.

:class:`~distengine.data.ResumableDistributedSampler` implements it.

Example:
    >>> from distengine.data import ResumableDistributedSampler
    >>> sampler = ResumableDistributedSampler(10, global_batch_size=4, num_replicas=1, rank=0)
    >>> isinstance(sampler, ResumableSampler)
    True
    >>> check_resumable_sampler(object())
    Traceback (most recent call last):
    ...
    TypeError: A resumable sampler needs global_batch_size, pass_length, first_irregular_batch, set_seed, set_epoch, set_start, batch_geometry, global_batch_digest (see distengine.data.ResumableSampler); object lacks all of them
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol, runtime_checkable

__all__ = ["RESUMABLE_SAMPLER_MEMBERS", "ResumableSampler", "check_resumable_sampler"]


@runtime_checkable
class ResumableSampler(Protocol):
    """A sampler of one data pass that can start at any global batch of it.

    Positions are counted in *global samples* (all ranks together), so they do not depend
    on the world size.
    """

    @property
    def global_batch_size(self) -> int:
        """Samples of one global batch (all ranks together)."""
        ...

    @property
    def pass_length(self) -> int:
        """Positions of one full pass, in global samples (a multiple of ``global_batch_size``)."""
        ...

    @property
    def first_irregular_batch(self) -> int:
        """The first batch index of a pass whose :meth:`batch_geometry` is not the default
        (an equal share, no padding, weight 1); ``pass_length // global_batch_size`` if none."""
        ...

    def set_seed(self, seed: int) -> None:
        """The run's seed (from ``Engine.run(seed=...)``): with the pass, it fixes the order."""
        ...

    def set_epoch(self, epoch: int) -> None:
        """Selects the data pass (0, 1, ...)."""
        ...

    def set_start(self, global_samples: int) -> None:
        """The next iterator starts at this offset of the pass (a multiple of the batch size)."""
        ...

    def batch_geometry(self, k: int) -> tuple[int, int, float]:
        """``(real rows, padded rows, loss weight)`` of this rank's ``k``-th batch of the pass."""
        ...

    def global_batch_digest(self, k: int) -> int:
        """A digest of the indices of global batch ``k``, identical on every rank."""
        ...


#: every member of :class:`ResumableSampler`, in the order above
RESUMABLE_SAMPLER_MEMBERS: tuple[str, ...] = (
    "global_batch_size",
    "pass_length",
    "first_irregular_batch",
    "set_seed",
    "set_epoch",
    "set_start",
    "batch_geometry",
    "global_batch_digest",
)
_INT_MEMBERS = ("global_batch_size", "pass_length", "first_irregular_batch")


def _has(obj: Any, name: str) -> bool:
    """Whether ``obj`` has ``name``, without running a property (which may read another,
    missing member) unless the attribute only exists dynamically (``__getattr__``)."""
    try:
        inspect.getattr_static(obj, name)
        return True
    except AttributeError:
        return hasattr(obj, name)


def check_resumable_sampler(sampler: Any) -> ResumableSampler:
    """Returns ``sampler`` if it has every member of :class:`ResumableSampler`.

    Raises:
        TypeError: naming the members it lacks, or those of the wrong kind (the three
            sizes must be ints, the others callable).
    """
    missing = [name for name in RESUMABLE_SAMPLER_MEMBERS if not _has(sampler, name)]
    name = type(sampler).__name__
    if missing:
        lacks = (
            "all of them" if len(missing) == len(RESUMABLE_SAMPLER_MEMBERS) else ", ".join(missing)
        )
        raise TypeError(
            f"A resumable sampler needs {', '.join(RESUMABLE_SAMPLER_MEMBERS)} (see "
            f"distengine.data.ResumableSampler); {name} lacks {lacks}"
        )
    wrong = [
        f"{member} must be an int, got {type(getattr(sampler, member)).__name__}"
        for member in _INT_MEMBERS
        if isinstance(getattr(sampler, member), bool)
        or not isinstance(getattr(sampler, member), int)
    ] + [
        f"{member} must be callable"
        for member in RESUMABLE_SAMPLER_MEMBERS
        if member not in _INT_MEMBERS and not callable(getattr(sampler, member))
    ]
    if wrong:
        raise TypeError(f"{name} is not a resumable sampler: {'; '.join(wrong)}")
    return sampler
