"""Collectives that are no-ops in a job of one: all_reduce, all_gather, broadcast, barrier, one_rank_first.

Tensors travel on the backend's device (``cuda:LOCAL_RANK`` under NCCL) and come back on
the device they came from. Picklable objects travel on the CPU group (the gloo side group
under NCCL), so they cost no GPU synchronisation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from . import runtime

__all__ = ["all_gather", "all_reduce", "barrier", "broadcast", "one_rank_first"]

T = TypeVar("T")

_OPS = {
    "sum": dist.ReduceOp.SUM,
    "max": dist.ReduceOp.MAX,
    "min": dist.ReduceOp.MIN,
    "prod": dist.ReduceOp.PRODUCT,
}
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


def _group() -> runtime.Runtime | None:
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


def _reduce_op(op: str) -> dist.ReduceOp:
    if not isinstance(op, str) or op.lower() not in _OPS:
        raise ValueError(f"op must be one of {sorted(_OPS)}, got {op!r}")
    return _OPS[op.lower()]


def all_reduce(x: T, op: str = "sum") -> T:
    """Reduces ``x`` over all ranks; returns it unchanged in a job of one.

    A tensor is reduced in place and returned; a Python ``int``/``float`` comes back as
    the same type.

    Args:
        x: a tensor or a Python number.
        op: ``"sum"``, ``"max"``, ``"min"`` or ``"prod"`` (case-insensitive).

    Raises:
        ValueError: unknown ``op``.
        TypeError: ``x`` is neither a tensor nor an int/float.

    Example:
        >>> import distengine.distributed as idist
        >>> idist.all_reduce(3)  # alone: 3; on 2 ranks both passing 3: 6
        3
    """
    reduce_op = _reduce_op(op)
    if isinstance(x, torch.Tensor):
        rt = _group()
        if rt is None:
            return x
        dev = _comm_device(rt)
        buf = x if x.device == dev else x.to(dev)
        dist.all_reduce(buf, op=reduce_op)
        if buf is not x:
            x.copy_(buf)
        return x
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"all_reduce expects a tensor, int or float, got {type(x).__name__}")
    rt = _group()
    if rt is None:
        return x
    dtype = torch.int64 if isinstance(x, int) else torch.float64
    buf = torch.tensor([x], dtype=dtype, device=_comm_device(rt))
    dist.all_reduce(buf, op=reduce_op)
    return type(x)(buf.item())  # type: ignore[return-value]


def _header(t: torch.Tensor) -> torch.Tensor:
    if t.dim() > _MAX_DIMS:
        raise ValueError(
            f"all_gather supports tensors of at most {_MAX_DIMS} dimensions, got {t.dim()}"
        )
    code = _DTYPES.index(t.dtype) if t.dtype in _DTYPES else -1
    shape = list(t.shape) + [-1] * (_MAX_DIMS - t.dim())
    return torch.tensor([t.dim(), code, *shape], dtype=torch.int64, device=t.device)


def _first_dims(rt: runtime.Runtime, t: torch.Tensor) -> list[int]:
    """First-dimension size on every rank; checks that the other dimensions and dtypes agree."""
    mine = _header(t)
    parts = [torch.empty_like(mine) for _ in range(rt.env.world_size)]
    dist.all_gather(parts, mine)
    headers = [p.tolist() for p in parts]
    ref = headers[rt.env.rank]
    for r, theirs in enumerate(headers):
        # [ndim, dtype code, d0, d1, ...]: everything but d0 must match.
        if theirs[:2] != ref[:2] or theirs[3:] != ref[3:]:
            raise ValueError(
                "all_gather needs tensors that differ at most in their first dimension and have "
                f"one dtype: rank {rt.env.rank} has shape {tuple(t.shape)} ({t.dtype}), rank {r} has "
                f"shape {tuple(theirs[2 : 2 + theirs[0]])} (dtype code {theirs[1]} vs {ref[1]})"
            )
    return [h[2] for h in headers]


def all_gather(x: Any, *, same_shape: bool = False) -> Any:
    """Gathers ``x`` from every rank.

    A tensor gives one tensor: the ranks' tensors concatenated along dim 0 in rank order
    (a 0-d tensor counts as shape ``(1,)``); ranks may pass different first-dimension
    sizes. Any other picklable object gives a list with one entry per rank. In a job of
    one: the tensor itself, or ``[x]``.

    Args:
        x: a tensor, number, string or other picklable object.
        same_shape: promise that every rank passes a tensor of the same shape and dtype;
            skips the size exchange, so the gather is one collective instead of two.

    Raises:
        ValueError: tensors that differ in more than the first dimension, or in dtype.

    Example:
        >>> import distengine.distributed as idist
        >>> idist.all_gather("a")  # alone; on 2 ranks: ["a", "b"]
        ['a']
    """
    rt = _group()
    if not isinstance(x, torch.Tensor):
        if rt is None:
            return [x]
        out: list[Any] = [None] * rt.env.world_size
        dist.all_gather_object(out, x, group=rt.cpu_group)
        return out
    if rt is None:
        return x
    dev = _comm_device(rt)
    t = (x.reshape(1) if x.dim() == 0 else x).to(dev).contiguous()
    sizes = [t.shape[0]] * rt.env.world_size if same_shape else _first_dims(rt, t)
    longest = max(sizes)
    if all(n == longest for n in sizes):
        parts = [torch.empty_like(t) for _ in sizes]
        dist.all_gather(parts, t)
    else:
        padded = t.new_zeros((longest, *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        parts = [p[:n] for p, n in zip(parts, sizes)]
    return torch.cat(parts).to(x.device)


def broadcast(x: T, src: int = 0) -> T:
    """Rank ``src``'s ``x`` on every rank; ``x`` itself in a job of one.

    Every rank must pass the same kind: tensors (same shape and dtype; filled in place and
    returned) or picklable objects (the value of non-``src`` ranks is ignored).

    Args:
        x: a tensor or a picklable object.
        src: the rank whose value wins.

    Raises:
        ValueError: ``src`` is not a valid rank.

    Example:
        >>> import distengine.distributed as idist
        >>> idist.broadcast({"seed": 7}, src=0)
        {'seed': 7}
    """
    rt = _group()
    world = rt.env.world_size if rt is not None else 1
    if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < world:
        raise ValueError(f"src must be a rank in [0, {world}), got {src!r}")
    if rt is None:
        return x
    if isinstance(x, torch.Tensor):
        dev = _comm_device(rt)
        buf = x if x.device == dev else x.to(dev)
        dist.broadcast(buf, src=src)
        if buf is not x:
            x.copy_(buf)
        return x
    box = [x]
    dist.broadcast_object_list(box, src=src, group=rt.cpu_group)
    return box[0]


def barrier() -> None:
    """Blocks until every rank reached it (no-op in a job of one).

    Example:
        >>> import distengine.distributed as idist
        >>> idist.barrier()
    """
    rt = _group()
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
    rt = _group()
    env = rt.env if rt is not None else None
    size = (env.local_world_size if local else env.world_size) if env is not None else 1
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < size:
        kind = "local rank" if local else "rank"
        raise ValueError(f"rank must be a {kind} in [0, {size}), got {rank!r}")
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
