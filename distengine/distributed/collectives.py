"""Collectives that are no-ops in a job of one: all_reduce, all_gather, broadcast, barrier, one_rank_first.

Tensors travel on the backend's device (``cuda:LOCAL_RANK`` under NCCL) and come back on
the device they came from. Picklable objects travel on the CPU group (the gloo side group
under NCCL), so they cost no GPU synchronisation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from . import groups, runtime

__all__ = [
    "all_gather",
    "all_gather_tensors_with_shapes",
    "all_reduce",
    "barrier",
    "broadcast",
    "one_rank_first",
]

T = TypeVar("T")

# Ignite's names (upper case) and ours (lower case) alike; looked up case-insensitively.
_OPS = {
    "sum": dist.ReduceOp.SUM,
    "max": dist.ReduceOp.MAX,
    "min": dist.ReduceOp.MIN,
    "prod": dist.ReduceOp.PRODUCT,
    "product": dist.ReduceOp.PRODUCT,
    "and": dist.ReduceOp.BAND,
    "or": dist.ReduceOp.BOR,
}
_BITWISE = ("and", "or")
_MAX_DIMS = 8
_DTYPES = (
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
)


def _collective_runtime() -> runtime.Runtime | None:
    """The runtime when a collective must really run; ``None`` for a no-op."""
    rt = runtime.active()
    if rt is None:
        env = runtime.passive_env()
        if env is not None and env.world_size > 1:
            raise RuntimeError(
                "distengine collectives cannot run in a DataLoader worker or a forked child of a rank "
                f"(this process belongs to rank {env.rank} of {env.world_size})"
            )
        return None
    return rt if rt.env.world_size > 1 else None


def _comm_device(rt: runtime.Runtime) -> torch.device:
    return (
        torch.device(f"cuda:{rt.env.local_rank}") if "nccl" in rt.backend else torch.device("cpu")
    )


def _reduce_op(op: str) -> tuple[str, dist.ReduceOp]:
    if not isinstance(op, str) or op.lower() not in _OPS:
        raise ValueError(
            f"Unsupported reduction operation {op!r}: op must be one of "
            "'SUM', 'PRODUCT', 'MIN', 'MAX', 'AND', 'OR' (any case; 'prod' = 'PRODUCT')"
        )
    return op.lower(), _OPS[op.lower()]


def _comm(group: Any) -> groups.Comm | None:
    """Where a collective with this ``group`` runs; ``None``: nothing to do (alone, or not a member)."""
    rt = _collective_runtime()
    if rt is None:
        groups.check_group_arg(group)
        return None
    return groups.resolve_group(rt, group)


def all_reduce(tensor: T, op: str = "sum", group: Any = None) -> T:
    """Reduces ``tensor`` over all ranks (or ``group``); returns it unchanged in a job of one.

    A tensor is reduced in place and returned; a Python number comes back as the same
    type (a ``bool`` reduced with ``"AND"``/``"OR"``/``"MIN"``/``"MAX"`` stays a ``bool``;
    summed, it counts the ranks that passed ``True``).

    Args:
        tensor: a tensor or a Python number.
        op: ``"SUM"``, ``"PRODUCT"`` (or ``"prod"``), ``"MIN"``, ``"MAX"``, and the bitwise
            ``"AND"``/``"OR"`` for integer and bool values; any case.
        group: ``None`` (every rank), a list of global ranks, or a group from
            :func:`new_group`. Ranks outside the group get ``tensor`` back unchanged.

    Raises:
        ValueError: unknown ``op``, or a ``group`` that is not a group.
        TypeError: ``tensor`` is neither a tensor nor a number, or ``"AND"``/``"OR"`` on
            floating-point values.

    Example:
        >>> import distengine.distributed as idist
        >>> idist.all_reduce(3)  # alone: 3; on 2 ranks both passing 3: 6
        3
        >>> idist.all_reduce(True, op="AND")  # True only if every rank passed True
        True
    """
    name, reduce_op = _reduce_op(op)
    if isinstance(tensor, torch.Tensor):
        if name in _BITWISE and (tensor.is_floating_point() or tensor.is_complex()):
            raise TypeError(
                f"op {op!r} is bitwise: it needs an integer or bool tensor, got {tensor.dtype}"
            )
        comm = _comm(group)
        if comm is None:
            return tensor
        dev = _comm_device(comm.rt)
        buf = tensor if tensor.device == dev else tensor.to(dev)
        dist.all_reduce(buf, op=reduce_op, group=comm.group)
        if buf is not tensor:
            tensor.copy_(buf)
        return tensor
    if not isinstance(tensor, (int, float)):
        raise TypeError(
            f"Unhandled input type {type(tensor).__name__}: all_reduce takes a tensor, an int or a float"
        )
    if name in _BITWISE and isinstance(tensor, float):
        raise TypeError(f"op {op!r} is bitwise: it needs an int or bool, got float {tensor!r}")
    comm = _comm(group)
    if comm is None:
        return tensor
    dtype = torch.float64 if isinstance(tensor, float) else torch.int64
    buf = torch.tensor([tensor], dtype=dtype, device=_comm_device(comm.rt))
    dist.all_reduce(buf, op=reduce_op, group=comm.group)
    if isinstance(tensor, bool) and name in ("sum", "prod", "product"):
        return int(buf.item())  # type: ignore[return-value]
    return type(tensor)(buf.item())  # type: ignore[return-value]


def _header(t: torch.Tensor) -> torch.Tensor:
    if t.dim() > _MAX_DIMS:
        raise ValueError(
            f"all_gather supports tensors of at most {_MAX_DIMS} dimensions, got {t.dim()}"
        )
    code = _DTYPES.index(t.dtype) if t.dtype in _DTYPES else -1
    shape = list(t.shape) + [-1] * (_MAX_DIMS - t.dim())
    return torch.tensor([t.dim(), code, *shape], dtype=torch.int64, device=t.device)


def _first_dims(comm: groups.Comm, t: torch.Tensor) -> list[int]:
    """First-dimension size on every member; checks that the other dimensions and dtypes agree."""
    mine = _header(t)
    parts = [torch.empty_like(mine) for _ in range(comm.size)]
    dist.all_gather(parts, mine, group=comm.group)
    headers = [p.tolist() for p in parts]
    ref = headers[comm.index]
    for r, theirs in enumerate(headers):
        # [ndim, dtype code, d0, d1, ...]: everything but d0 must match.
        if theirs[:2] != ref[:2] or theirs[3:] != ref[3:]:
            raise ValueError(
                "all_gather needs tensors that differ at most in their first dimension and have "
                f"one dtype: rank {comm.rt.env.rank} has shape {tuple(t.shape)} ({t.dtype}), rank {r} has "
                f"shape {tuple(theirs[2 : 2 + theirs[0]])} (dtype code {theirs[1]} vs {ref[1]})"
            )
    return [h[2] for h in headers]


def all_gather(tensor: Any, group: Any = None, *, same_shape: bool = False) -> Any:
    """Gathers ``tensor`` from every rank (or every member of ``group``).

    A tensor gives one tensor: the ranks' tensors concatenated along dim 0 in rank order
    (a 0-d tensor counts as shape ``(1,)``); ranks may pass different first-dimension
    sizes. Any other picklable object (numbers and strings included) gives a list with
    one entry per rank. In a job of one: the tensor itself (a 0-d one as shape ``(1,)``),
    or ``[tensor]``. A rank outside ``group`` gets its own ``tensor`` back.

    Args:
        tensor: a tensor, number, string or other picklable object.
        group: ``None`` (every rank), a list of global ranks, or a group from
            :func:`new_group`.
        same_shape: promise that every rank passes a tensor of the same shape and dtype;
            skips the size exchange, so the gather is one collective instead of two.

    Raises:
        ValueError: tensors that differ in more than the first dimension, or in dtype; a
            ``group`` that is not a group.

    Example:
        >>> import distengine.distributed as idist
        >>> idist.all_gather("a")  # alone; on 2 ranks: ["a", "b"]
        ['a']
    """
    rt = _collective_runtime()
    if rt is None:
        groups.check_group_arg(group)
        if isinstance(tensor, torch.Tensor):
            return tensor.reshape(1) if tensor.dim() == 0 else tensor
        return [tensor]
    comm = groups.resolve_group(rt, group)
    if comm is None:
        return tensor
    if not isinstance(tensor, torch.Tensor):
        out: list[Any] = [None] * comm.size
        dist.all_gather_object(out, tensor, group=comm.group if group is not None else rt.cpu_group)
        return out
    dev = _comm_device(rt)
    t = (tensor.reshape(1) if tensor.dim() == 0 else tensor).to(dev).contiguous()
    sizes = [t.shape[0]] * comm.size if same_shape else _first_dims(comm, t)
    longest = max(sizes)
    if all(n == longest for n in sizes):
        parts = [torch.empty_like(t) for _ in sizes]
        dist.all_gather(parts, t, group=comm.group)
    else:
        padded = t.new_zeros((longest, *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=comm.group)
        parts = [p[:n] for p, n in zip(parts, sizes)]
    return torch.cat(parts).to(tensor.device)


def all_gather_tensors_with_shapes(
    tensor: torch.Tensor, shapes: Sequence[Sequence[int]], group: Any = None
) -> list[torch.Tensor]:
    """Gathers tensors whose shapes differ in any dimension, given every rank's shape.

    Each tensor is zero-padded to the largest shape, gathered in one collective, and cut
    back, so ``shapes`` must be known beforehand (use :func:`all_gather` on an object
    when they are not). Every rank passes the same ``shapes``.

    Args:
        tensor: this rank's tensor; its shape must be ``shapes[i]`` for this rank's index
            ``i`` in the group.
        shapes: the shape of every member's tensor, in rank order (same number of
            dimensions for all).
        group: ``None`` (every rank), a list of global ranks, or a group from
            :func:`new_group`.

    Returns:
        One tensor per member, in rank order; ``[tensor]`` in a job of one or on a rank
        outside ``group``.

    Raises:
        ValueError: ``shapes`` does not have one entry per member, the entries differ in
            length, or this rank's entry is not the shape of ``tensor``.

    Example:
        >>> import torch, distengine.distributed as idist
        >>> idist.all_gather_tensors_with_shapes(torch.ones(2, 3), [[2, 3]])[0].shape
        torch.Size([2, 3])
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor should be a torch.Tensor, got {type(tensor).__name__}")
    comm = _comm(group)
    if comm is None:
        return [tensor]
    shape_list = [list(s) for s in shapes]
    if len(shape_list) != comm.size or len({len(s) for s in shape_list}) != 1:
        raise ValueError(
            f"shapes should hold one shape per member ({comm.size}), all with the same number "
            f"of dimensions, got {shape_list}"
        )
    if shape_list[comm.index] != list(tensor.shape):
        raise ValueError(
            f"shapes[{comm.index}] should be the shape of this rank's tensor, "
            f"{list(tensor.shape)}, got {shape_list[comm.index]}"
        )
    largest = [max(dims) for dims in zip(*shape_list)]
    padded = tensor.new_zeros(largest)
    padded[tuple(slice(0, d) for d in tensor.shape)] = tensor
    dev = _comm_device(comm.rt)
    buf = padded.to(dev)
    parts = [torch.empty_like(buf) for _ in range(comm.size)]
    dist.all_gather(parts, buf, group=comm.group)
    return [p[tuple(slice(0, d) for d in s)].to(tensor.device) for p, s in zip(parts, shape_list)]


def broadcast(tensor: T, src: int = 0, safe_mode: bool = False) -> T:
    """Broadcasts rank ``src``'s ``tensor`` to every rank; returns ``tensor`` itself in a job of one.

    Without ``safe_mode`` every rank passes the same kind: tensors of the same shape and
    dtype (filled in place and returned), or picklable objects, ``None`` included (the
    value of non-``src`` ranks is ignored). With ``safe_mode=True`` the other ranks may
    pass anything, ``None`` included, whatever ``src`` sends: a tensor from ``src``
    arrives in a new tensor on :func:`device` (one more small collective tells its shape
    and dtype).

    Args:
        tensor: a tensor or a picklable object.
        src: the rank whose value wins.
        safe_mode: let non-``src`` ranks pass a placeholder of any kind, or ``None``.

    Raises:
        ValueError: ``src`` is not a valid rank.

    Example:
        >>> import distengine.distributed as idist
        >>> idist.broadcast({"seed": 7}, src=0)
        {'seed': 7}
        >>> # safe_mode: ranks other than src may pass None (they need not know the type)
        >>> idist.broadcast(None if idist.get_rank() > 0 else {"seed": 7}, src=0, safe_mode=True)
        {'seed': 7}
    """
    rt = _collective_runtime()
    world = rt.env.world_size if rt is not None else 1
    if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < world:
        raise ValueError(f"src must be a rank in [0, {world}), got {src!r}")
    if rt is None:
        return tensor
    is_src = rt.env.rank == src
    dev = _comm_device(rt)
    if safe_mode:
        kind = (
            ("tensor", tuple(tensor.shape), tensor.dtype)
            if isinstance(tensor, torch.Tensor)
            else ("object",)
        )
        box = [kind if is_src else None]
        dist.broadcast_object_list(box, src=src, group=rt.cpu_group)
        kind = box[0]
        if not is_src:
            tensor = (
                torch.empty(kind[1], dtype=kind[2], device=dev) if kind[0] == "tensor" else None
            )
    if isinstance(tensor, torch.Tensor):
        buf = tensor if tensor.device == dev else tensor.to(dev)
        dist.broadcast(buf, src=src)
        if buf is not tensor:
            tensor.copy_(buf)
        return tensor
    box = [tensor]
    dist.broadcast_object_list(box, src=src, group=rt.cpu_group)
    return box[0]


def barrier() -> None:
    """Blocks until every rank reached it (no-op in a job of one).

    Example:
        >>> import distengine.distributed as idist
        >>> idist.barrier()
    """
    rt = _collective_runtime()
    if rt is not None:
        # The CPU group under NCCL: a barrier needs no GPU work and no device sync.
        dist.barrier(group=rt.cpu_group)


@contextmanager
def one_rank_first(rank: int = 0, local: bool = False) -> Iterator[None]:
    """Runs the block on ``rank`` first, then on all the others (e.g. around a download).

    Args:
        rank: the rank that goes first (a local rank when ``local=True``).
        local: ``True``: ``rank`` is a local rank, so one process per node goes first.

    Raises:
        ValueError: ``rank`` is not a valid (local) rank.

    Example:
        >>> import distengine.distributed as idist
        >>> with idist.one_rank_first(local=True):
        ...     pass  # e.g. download the data set once per node
    """
    rt = _collective_runtime()
    env = rt.env if rt is not None else None
    size = (env.local_world_size if local else env.world_size) if env is not None else 1
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < size:
        kind = "local rank" if local else "rank"
        raise ValueError(f"rank should be between 0 and {size - 1}, but given {rank!r} ({kind})")
    if env is None:
        yield
        return
    me = env.local_rank if local else env.rank
    if me != rank:
        barrier()
    # No try/finally: after an exception in the block the other ranks must not be
    # released as if the first rank had succeeded; the failure path ends the job.
    yield
    if me == rank:
        barrier()
