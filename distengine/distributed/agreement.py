"""Cross-rank agreement on the CPU group: OR of request flags, sync checks, store rendezvous.

Under NCCL these run on the gloo side group, so the per-iteration agreement of the engine
never forces a GPU synchronisation. Each marks itself in flight for the hang watchdog
(:mod:`.hangs`): on the per-iteration path that is a few attribute writes, no clock and
no syscall. :func:`start_agreement` starts the OR without waiting for it (the engine
overlaps it with the next iteration); its mark holds the pending work, so the watchdog
counts it as waited for only while the work has not completed.

**Riding on the gradients.** A collective of its own costs an iteration more than its
bytes: on a host whose cores are all busy training (CPU jobs), waking the communication
threads of every rank for 8 bytes costs milliseconds, overlapped or not. So a CPU model
wrapped in DDP by ``auto_model`` (:func:`ride_gradients`) gets a DDP communication hook
that reduces gradients as DDP does (multiply by 1/world size, sum) and appends to
the first bucket of each backward pass (bucket 0: DDP caps it at 1 MiB by default, so the
copy it takes is small) the bits of the agreement armed at that moment (one element per
bit: summed over ranks, a bit is set when its sum is positive; zeros when none is armed,
so every backward pass reduces the same lengths). At world size 2 the weights are bitwise
those of DDP alone; from 3 ranks on, gloo may order a sum differently for the longer
bucket (equal to float rounding), the same way in every iteration and every run. An
:class:`AgreementChannel` arms such a *ride* instead of starting a collective; reading it
after the next backward costs nothing. When no backward pass carried it (an evaluator, a
``no_sync`` step, another model), the read falls back to the blocking collective and the
channel starts real collectives from then on; every rank runs the same program, so every
rank rides or falls back at the same iteration. A comm hook the user registers later
replaces the ride (the agreement then uses collectives again).
"""

from __future__ import annotations

import threading
import weakref
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .collectives import _collective_runtime
from .hangs import IN_FLIGHT, watch_collective

__all__ = [
    "AgreementChannel",
    "PendingAgreement",
    "agree_flags",
    "check_in_sync",
    "rendezvous_check",
    "ride_gradients",
    "start_agreement",
]

_get_ident = threading.get_ident
_COUNT_LOCK = threading.Lock()  # guards Runtime.rendezvous_counts


def _check_flags(flags: object) -> None:
    if isinstance(flags, bool) or not isinstance(flags, int):
        raise TypeError(f"flags must be an int, got {type(flags).__name__}")
    if not 0 <= flags < 2**63:
        raise ValueError(f"flags must be in [0, 2**63), got {flags}")


def _buffer(rt: Any) -> torch.Tensor:
    """A 1-element int64 buffer of the runtime's (reused: no allocation per agreement)."""
    free = rt.agreement_buffers
    return free.pop() if free else torch.zeros(1, dtype=torch.int64)


def _release(rt: Any, buf: torch.Tensor) -> None:
    """Gives a buffer back once its agreement was waited for (kept with the runtime)."""
    if len(rt.agreement_buffers) < 4:
        rt.agreement_buffers.append(buf)


def agree_flags(flags: int) -> int:
    """Returns the bitwise OR of ``flags`` over all ranks, in one small CPU collective.

    Args:
        flags: a non-negative int of request bits (e.g. terminate = 1).

    Returns:
        The OR over all ranks; ``flags`` itself in a job of one.

    Raises:
        TypeError: ``flags`` is not an int.
        ValueError: ``flags`` is negative or does not fit in 63 bits.

    Example:
        >>> import distengine.distributed as idist
        >>> idist.agree_flags(0b100)  # alone; with another rank passing 0b001: 0b101
        4
    """
    _check_flags(flags)
    rt = _collective_runtime()
    if rt is None:
        return flags
    buf = _buffer(rt)
    buf.fill_(flags)
    w = IN_FLIGHT  # inlined watch_collective("agreement"): this runs once per iteration
    w.seq += 1
    w.name = "agreement"
    w.thread = _get_ident()
    w.work = None
    try:
        dist.all_reduce(buf, op=dist.ReduceOp.BOR, group=rt.cpu_group)
    finally:
        w.name = None
    result = int(buf.item())
    _release(rt, buf)
    return result


class PendingAgreement:
    """An OR of flags over all ranks that :func:`start_agreement` started; :meth:`wait` reads it.

    Every rank must start the same agreements in the same order (they are collectives), and
    wait for each before it starts a blocking collective whose result depends on it.
    """

    __slots__ = ("_buf", "_result", "_rt", "_work")

    def __init__(self, result: int | None, rt: Any = None, buf: Any = None, work: Any = None):
        self._result = result
        self._rt, self._buf, self._work = rt, buf, work

    def is_completed(self) -> bool:
        """Whether :meth:`wait` would return at once."""
        return self._result is not None or self._work.is_completed()

    def wait(self) -> int:
        """Waits for every rank's flags and returns their OR (again on later calls)."""
        if self._result is not None:
            return self._result
        work, w = self._work, IN_FLIGHT
        if w.work is not work:  # another watched collective ran in between: mark it again
            w.seq += 1
            w.name = "agreement"
            w.thread = _get_ident()
            w.work = work
        try:
            work.wait()
        finally:
            if w.work is work:
                w.name = None
                w.work = None
        self._result = int(self._buf.item())
        _release(self._rt, self._buf)
        self._buf = self._work = None
        return self._result


def start_agreement(flags: int) -> PendingAgreement:
    """Starts :func:`agree_flags` without waiting: ``start_agreement(f).wait() == agree_flags(f)``.

    The collective runs in the background while this rank goes on; until it completes, the
    hang watchdog counts this rank as waiting in ``'agreement'`` (a rank whose peers never
    start it is reported after ``DISTENGINE_HANG_TIMEOUT``, wherever it is blocked).

    Args:
        flags: a non-negative int of request bits.

    Returns:
        A :class:`PendingAgreement`; in a job of one it holds ``flags`` already.

    Raises:
        TypeError: ``flags`` is not an int.
        ValueError: ``flags`` is negative or does not fit in 63 bits.

    Example:
        >>> import distengine.distributed as idist
        >>> pending = idist.start_agreement(0b10)
        >>> # ... one iteration of work ...
        >>> pending.wait()  # alone; with another rank passing 0b01: 0b11
        2
    """
    _check_flags(flags)
    rt = _collective_runtime()
    if rt is None:
        return PendingAgreement(flags)
    buf = _buffer(rt)
    buf.fill_(flags)
    work = dist.all_reduce(buf, op=dist.ReduceOp.BOR, group=rt.cpu_group, async_op=True)
    w = IN_FLIGHT
    w.seq += 1
    w.name = "agreement"
    w.thread = _get_ident()
    w.work = work
    return PendingAgreement(None, rt, buf, work)


# --- agreements riding on DDP's gradient all-reduce ----------------------------------------
_BITS = 63  # flags are < 2**63: one element per bit, the same count on every rank


class _Ride:
    """One armed agreement: the flags the next backward pass carries, and what came back."""

    __slots__ = ("flags", "result", "fired")

    def __init__(self, flags: int):
        self.flags = flags
        self.result = 0
        self.fired = False

    def is_completed(self) -> bool:  # for the hang watchdog: waiting only until it came back
        return self.fired


_armed: list[_Ride | None] = [None]  # the ride the next bucket 0 carries (one per process)
_BIT_VALUES = torch.tensor([1 << i for i in range(_BITS)], dtype=torch.int64)


class _HookState:
    """A hooked DDP model's group and the comm hook the user registered after ours, if any."""

    __slots__ = ("group", "scale", "user", "__weakref__")

    def __init__(self, group: Any, world: int):
        self.group = group
        self.scale = 1.0 / world
        self.user: tuple[Any, Any] | None = None


def _reduced(fut: Any) -> torch.Tensor:
    return fut.value()[0]


def _ride_hook(state, bucket):  # type: ignore[no-untyped-def]
    """DDP's reduction (gradients times 1/world size, then summed, as DDP does without a
    hook), with 63 elements appended to bucket 0 (reduced once per backward pass, and
    small): the armed ride's bits, or zeros when none is armed. Always appended, so that
    every backward pass reduces buffers of the same lengths: with three ranks or more the
    order in which a sum is taken depends on the buffer's length, and an exact resume needs
    the same sums whether or not a ride was armed.

    (``_HookState``, ``dist.GradBucket`` -> ``Future[Tensor]``: not annotated, since DDP
    checks a hook's annotations as objects and this module's are strings.)"""
    if state.user is not None:
        hook, user_state = state.user
        return hook(user_state, bucket)
    buf = bucket.buffer()
    if bucket.index() != 0 or buf.device.type != "cpu" or not buf.is_floating_point():
        buf.mul_(state.scale)
        work = dist.all_reduce(buf, group=state.group, async_op=True)
        return work.get_future().then(_reduced)
    ride = _armed[0]
    if ride is not None and ride.fired:
        ride = None  # carried already (a second backward pass in the same iteration)
    n = buf.numel()
    joined = torch.empty(n + _BITS, dtype=buf.dtype)
    torch.mul(buf, state.scale, out=joined[:n])
    if ride is None:
        joined[n:] = 0
    else:
        joined[n:] = (ride.flags & _BIT_VALUES).ne(0)
    work = dist.all_reduce(joined, group=state.group, async_op=True)

    def done(fut: Any) -> torch.Tensor:
        out = fut.value()[0]
        if ride is not None:
            ride.result |= int(_BIT_VALUES[out[n:] > 0].sum())
            ride.fired = True
        return out[:n]

    return work.get_future().then(done)


def ride_gradients(model: Any) -> bool:
    """Lets the agreements of this job ride on ``model``'s gradient all-reduce (see the
    module docstring); for a CPU ``DistributedDataParallel`` model on distengine's group.

    Returns whether the hook was registered (``False``: a model on another device, or no
    distengine runtime; agreements then use collectives of their own). A comm hook
    registered on ``model`` afterwards (``register_comm_hook`` or
    ``register_builtin_comm_hook``) replaces the ride.
    """
    rt = _collective_runtime()
    params = list(model.parameters())
    if rt is None or not params or any(p.device.type != "cpu" for p in params):
        return False
    group = model.process_group
    state = _HookState(group, dist.get_world_size(group))
    model.register_comm_hook(state, _ride_hook)
    _take_over_hook_registration(model, state)
    rt.rides = True
    return True


def _take_over_hook_registration(model: Any, state: _HookState) -> None:
    """A hook the user registers later (DDP takes one only) replaces the ride. (The model
    keeps only a weak reference to ``state``, which holds the process group: at finalize the
    group must be free to go, with its threads.)"""
    ref = weakref.ref(state)

    def register_comm_hook(user_state: object, hook: Any) -> None:
        st = ref()
        if st is None or st.user is not None:
            raise RuntimeError(
                "register_comm_hook or register_builtin_comm_hook can only be called once."
            )
        st.user = (hook, user_state)

    def register_builtin_comm_hook(comm_hook_type: Any) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        hooks = {
            dist.BuiltinCommHookType.ALLREDUCE: default_hooks.allreduce_hook,
            dist.BuiltinCommHookType.FP16_COMPRESS: default_hooks.fp16_compress_hook,
        }
        if comm_hook_type not in hooks:
            raise ValueError(f"unknown built-in comm hook {comm_hook_type!r}")
        st = ref()
        register_comm_hook(None if st is None else st.group, hooks[comm_hook_type])

    model.register_comm_hook = register_comm_hook
    model.register_builtin_comm_hook = register_builtin_comm_hook


class _RidingAgreement:
    """A ride armed by :meth:`AgreementChannel.start`; :meth:`wait` as
    :meth:`PendingAgreement.wait`."""

    __slots__ = ("_channel", "_ride", "_result")

    def __init__(self, channel: AgreementChannel, ride: _Ride):
        self._channel, self._ride, self._result = channel, ride, None

    def is_completed(self) -> bool:
        return self._ride.fired or self._result is not None

    def wait(self) -> int:
        if self._result is not None:
            return self._result
        ride = self._ride
        if _armed[0] is ride:
            _armed[0] = None
        w = IN_FLIGHT
        if w.work is ride:
            w.name = None
            w.work = None
        if ride.fired:
            self._result = ride.result
        else:  # no backward pass carried it (on no rank): agree now, and no more rides
            self._channel.riding = False
            self._result = agree_flags(ride.flags)
        return self._result


class AgreementChannel:
    """The overlapped agreements of one engine run: :meth:`start` is :func:`start_agreement`,
    riding on the gradient all-reduce while rides are carried (module docstring).

    Every rank must create its channel at the same point of the program and start the same
    agreements in the same order (as with :func:`start_agreement`).

    Example:
        >>> import distengine.distributed as idist
        >>> channel = idist.AgreementChannel()
        >>> channel.start(0b10).wait()  # alone; with another rank passing 0b01: 0b11
        2
    """

    __slots__ = ("riding",)

    def __init__(self) -> None:
        rt = _collective_runtime()
        self.riding = rt is not None and rt.rides

    def start(self, flags: int) -> PendingAgreement | _RidingAgreement:
        """Starts the OR of ``flags`` over all ranks; ``wait()`` on the result reads it."""
        if not self.riding:
            return start_agreement(flags)
        _check_flags(flags)
        ride = _armed[0] = _Ride(flags)
        w = IN_FLIGHT  # the watchdog counts this rank as waiting until the ride comes back
        w.seq += 1
        w.name = "agreement"
        w.thread = _get_ident()
        w.work = ride
        return _RidingAgreement(self, ride)


def check_in_sync(values: tuple[int, ...], names: tuple[str, ...]) -> None:
    """Checks that every rank passes the same ``values``; raises on the first difference.

    All ranks compare with rank 0; the error names the lowest rank that differs, the
    first differing field and both values, on every rank.

    Args:
        values: integers that must be equal on all ranks (epoch, iteration, a digest …).
        names: one name per value, for the error message.

    Raises:
        RuntimeError: some rank differs from rank 0.
        ValueError: ``values`` and ``names`` differ in length.
        TypeError: a value is not an int.

    Example:
        >>> import distengine.distributed as idist
        >>> idist.check_in_sync((1, 20), ("epoch", "iteration"))
    """
    values, names = tuple(values), tuple(names)
    if len(values) != len(names):
        raise ValueError(
            f"values and names must have the same length, got {len(values)} values and {len(names)} names"
        )
    for name, v in zip(names, values):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"check_in_sync compares ints, got {name}={v!r} ({type(v).__name__})")
    rt = _collective_runtime()
    if rt is None:
        return
    gathered: list[tuple[int, ...] | None] = [None] * rt.env.world_size
    # Objects, not tensors: digests may exceed int64, and ranks that diverged may even
    # pass different numbers of values.
    with watch_collective("sync check"):
        dist.all_gather_object(gathered, values, group=rt.cpu_group)
    ref = gathered[0]
    assert ref is not None
    for r, theirs in enumerate(gathered[1:], start=1):
        assert theirs is not None
        if theirs == ref:
            continue
        for i, name in enumerate(names):
            mine0 = ref[i] if i < len(ref) else "<missing>"
            other = theirs[i] if i < len(theirs) else "<missing>"
            if mine0 != other:
                raise RuntimeError(
                    f"ranks out of sync: rank {r} has {name}={other} but rank 0 has {name}={mine0} "
                    f"(seen on rank {rt.env.rank})"
                )
        raise RuntimeError(
            f"ranks out of sync: rank {r} passed {theirs}, rank 0 passed {ref} (fields {names})"
        )


def rendezvous_check(tag: str, timeout: float) -> None:
    """Waits until every rank reached ``tag``; fails in bounded time instead of hanging.

    A store-based barrier: a rank that never arrives (e.g. a collective called on rank 0
    only) makes every rank that did arrive raise after ``timeout`` seconds, naming the
    ranks that are missing and where they are. A tag may be used again: every rank's
    ``n``-th check with a tag meets the others' ``n``-th (counted per process group, so the
    count starts again with a new group), and reports name it ``tag#n`` from the second on.

    Args:
        tag: a name for this point of the program (e.g. ``"checkpoint/save"``).
        timeout: seconds to wait for the other ranks.

    Raises:
        TimeoutError: not every rank reached ``tag`` within ``timeout``.
        ValueError: empty ``tag`` or non-positive ``timeout``.

    Example:
        >>> import distengine.distributed as idist
        >>> idist.rendezvous_check("setup/1", timeout=60)  # alone: returns at once
    """
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"tag must be a non-empty str, got {tag!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    rt = _collective_runtime()
    if rt is None:
        return
    with _COUNT_LOCK:
        n = rt.rendezvous_counts[tag] = rt.rendezvous_counts.get(tag, 0) + 1
    key = f"rdv/{tag}#{n}"  # in the store: this occurrence of the tag
    shown = tag if n == 1 else f"{tag}#{n}"  # in reports
    keys, world, rank = rt.keys, rt.env.world_size, rt.env.rank
    keys.set(f"rdv/at/{rank}", shown)
    arrived = keys.add(f"{key}/count", 1)
    if arrived == world:
        keys.set(f"{key}/done", "1")
        return
    try:
        with watch_collective(f"rendezvous {shown!r}"):
            keys.wait([f"{key}/done"], timedelta(seconds=timeout))
        return
    except dist.DistStoreError:  # the wait timed out
        if keys.check([f"{key}/done"]):
            return
    where = []
    for r in range(world):
        at = keys.get(f"rdv/at/{r}").decode() if keys.check([f"rdv/at/{r}"]) else "<nothing yet>"
        if at != shown:
            where.append(f"rank {r} is at {at!r}")
    raise TimeoutError(
        f"only {keys.add(f'{key}/count', 0)} of {world} ranks reached {shown!r} within {timeout:g} s; "
        + ("; ".join(where) if where else "the others arrived too late")
    )
