"""Sharded models and their state: FSDP2 wrapping, DTensor detection, DCP saves and loads.

The small API the rest of distengine uses for sharded state (only this package may import
``torch.distributed``):

- :func:`shard_model` applies FSDP2's ``fully_shard`` on the device mesh of the world
  (``idist.auto_model(model, sharding="fsdp")``); :func:`intends_sharding` tells whether
  a model was meant to be sharded (also at world size 1, where it is left whole), so that
  its checkpoints keep the sharded layout at every world size;
- :func:`is_dtensor`, :func:`holds_dtensor`, :func:`module_is_sharded`,
  :func:`optimizer_is_sharded` detect sharded state without importing anything heavy;
- :func:`model_state`, :func:`optimizer_state` give state dicts keyed by parameter names
  (what resharding needs); :func:`apply_model_state`, :func:`apply_optimizer_state` load
  them back;
- :func:`save_state` / :func:`load_state` run a DCP save or load (a collective) through
  files that the caller writes and verifies (:mod:`.dcp_storage`); :func:`stage` copies
  sharded state off the training tensors for a background save.

``torch.distributed.checkpoint`` and ``torch.distributed.fsdp`` are imported on first use:
importing DCP takes seconds, which jobs without sharded state should not pay.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, BinaryIO

import torch
import torch.distributed as dist

from . import runtime

__all__ = [
    "SHARDING_MODES",
    "ShardedStateError",
    "apply_model_state",
    "apply_optimizer_state",
    "dtensors_in_use",
    "holds_dtensor",
    "intends_sharding",
    "io_group",
    "is_dtensor",
    "load_state",
    "model_state",
    "module_is_sharded",
    "optimizer_is_sharded",
    "optimizer_state",
    "reshard",
    "save_state",
    "shard_model",
    "stage",
]

SHARDING_MODES = ("ddp", "fsdp", "none")

# Modules shard_model/auto_model made sharded: a mark on each module that lives as long as
# the module (weak references), kept here so that no attribute is set on the user's module.
_intent: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
_BACKGROUND = "distengine/checkpoint-background"


class ShardedStateError(RuntimeError):
    """A sharded save or load failed on some rank; raised on every rank.

    Attributes:
        failures: ``{rank: exception}`` as reported by each failing rank.
    """

    def __init__(self, message: str, failures: Mapping[int, BaseException]):
        super().__init__(message)
        self.failures = dict(failures)


# --- detection --------------------------------------------------------------------------------


def is_dtensor(x: Any) -> bool:
    """Whether ``x`` is a ``DTensor`` (without importing DTensor support if no one did).

    Example:
        >>> is_dtensor(torch.zeros(1))
        False
    """
    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and isinstance(x, mod.DTensor)


def dtensors_in_use() -> bool:
    """Whether DTensor support is loaded in this process (else no DTensor can exist).

    Example:
        >>> isinstance(dtensors_in_use(), bool)
        True
    """
    return "torch.distributed.tensor" in sys.modules


def holds_dtensor(tree: Any) -> bool:
    """Whether a state (nested dicts, lists, tuples) holds a ``DTensor`` anywhere.

    Example:
        >>> holds_dtensor({"w": [torch.zeros(1)]})
        False
    """
    if "torch.distributed.tensor" not in sys.modules:
        return False
    if is_dtensor(tree):
        return True
    if isinstance(tree, Mapping):
        return any(holds_dtensor(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return any(holds_dtensor(v) for v in tree)
    return False


def intends_sharding(module: torch.nn.Module) -> bool:
    """Whether ``module`` came from ``auto_model(..., sharding="fsdp")`` (sharded, or left
    whole at world size 1).

    Example:
        >>> intends_sharding(torch.nn.Linear(1, 1))
        False
    """
    try:
        return module in _intent
    except TypeError:
        return False


def module_is_sharded(module: torch.nn.Module) -> bool:
    """Whether a model's state is sharded state: it holds DTensors, or it was meant to be
    sharded (:func:`intends_sharding`).

    Example:
        >>> module_is_sharded(torch.nn.Linear(1, 1))
        False
    """
    if intends_sharding(module) or _is_fsdp(module):
        return True
    if "torch.distributed.tensor" not in sys.modules:
        return False
    return any(is_dtensor(t) for t in module.parameters()) or any(
        is_dtensor(t) for t in module.buffers()
    )


def _is_fsdp(module: Any) -> bool:
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(module, fsdp.FSDPModule)


def reshard(module: torch.nn.Module) -> None:
    """Puts back the sharded parameters of every FSDP unit of ``module`` (local, no
    communication). After a forward without backward (an evaluation) FSDP leaves the
    root's parameters gathered, as plain tensors that are not the optimizer's; state is
    read from the sharded ones.

    Example:
        >>> reshard(torch.nn.Linear(1, 1))  # nothing to do for a model that is not sharded
    """
    if "torch.distributed.fsdp" not in sys.modules:
        return
    for m in module.modules():
        if _is_fsdp(m):
            m.reshard()


def optimizer_is_sharded(optimizer: torch.optim.Optimizer) -> bool:
    """Whether an optimizer's state is sharded state: some parameter is a DTensor, or
    belongs to a model that :func:`intends_sharding`.

    Example:
        >>> m = torch.nn.Linear(1, 1)
        >>> optimizer_is_sharded(torch.optim.SGD(m.parameters(), lr=0.1))
        False
    """
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if any(is_dtensor(p) for p in params):
        return True
    ids = {id(p) for p in params}
    return any(ids & {id(p) for p in m.parameters()} for m in list(_intent))


# --- wrapping ---------------------------------------------------------------------------------


def _default_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The submodules sharded as units of their own: the children of every ``ModuleList``
    (a transformer's blocks), outermost first."""
    units: list[torch.nn.Module] = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList):
            units.extend(module.children())
    return units


def shard_model(
    model: torch.nn.Module,
    device: torch.device,
    shard_modules: Callable[[torch.nn.Module], bool] | Iterable[type] | None = None,
    **fsdp_kwargs: Any,
) -> torch.nn.Module:
    """Shards ``model`` with FSDP2 (``fully_shard``) over every rank; a plain model at
    world size 1. The result is remembered as meant to be sharded.

    Units: each submodule selected by ``shard_modules`` (a predicate, or module types),
    by default every child of a ``ModuleList``, then the root. Parameters become DTensors
    sharded along their first dimension (uneven shards allowed).

    Args:
        model: the model, already on ``device``.
        device: this rank's device; the mesh is made on its type (``"cpu"`` with gloo).
        shard_modules: which submodules get a ``fully_shard`` of their own.
        **fsdp_kwargs: passed to ``fully_shard`` (``mp_policy``, ``reshard_after_forward``,
            ``offload_policy``).

    Raises:
        ValueError: a CUDA model with the gloo backend (use NCCL), or an unknown argument.
    """
    rt = runtime.active()
    if rt is None or rt.env.world_size == 1:
        _intent.add(model)
        return model
    if device.type == "cuda" and "nccl" not in rt.backend:
        raise ValueError(
            f"sharding='fsdp' with the model on {device} needs the nccl backend, got "
            f"{rt.backend!r} (on CPU ranks, keep the model on CPU)"
        )
    from torch.distributed.device_mesh import init_device_mesh

    try:
        from torch.distributed.fsdp import FSDPModule, fully_shard
    except ImportError:
        raise RuntimeError(
            f"sharding='fsdp' needs FSDP2 (torch.distributed.fsdp.fully_shard, torch >= 2.6); "
            f"this is torch {torch.__version__}"
        ) from None
    if isinstance(model, FSDPModule):
        _intent.add(model)
        return model
    mesh = init_device_mesh(device.type, (rt.env.world_size,))
    if shard_modules is None:
        units = _default_units(model)
    elif callable(shard_modules) and not isinstance(shard_modules, type):
        units = [m for m in model.modules() if m is not model and shard_modules(m)]
    else:
        types = tuple(shard_modules)
        if not types or not all(isinstance(t, type) for t in types):
            raise ValueError(
                "shard_modules must be a predicate (module -> bool) or module types, got "
                f"{shard_modules!r}"
            )
        units = [m for m in model.modules() if m is not model and isinstance(m, types)]
    try:
        for unit in reversed(units):  # innermost first: a unit never holds a sharded one twice
            if not isinstance(unit, FSDPModule):
                fully_shard(unit, mesh=mesh, **fsdp_kwargs)
        fully_shard(model, mesh=mesh, **fsdp_kwargs)
    except TypeError as e:
        raise ValueError(f"sharding='fsdp': bad argument for fully_shard: {e}") from e
    _intent.add(model)
    return model


# --- state dicts ------------------------------------------------------------------------------


def model_state(model: torch.nn.Module) -> dict[str, Any]:
    """The model's state keyed by parameter names: DTensors for sharded parameters.

    Example:
        >>> sorted(model_state(torch.nn.Linear(1, 1)))
        ['bias', 'weight']
    """
    if not module_is_sharded(model) or not holds_dtensor(dict(model.named_parameters())):
        return dict(model.state_dict())
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model)


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state keyed by parameter names (not indices), so that it loads
    into the same model sharded over any number of ranks. An optimizer that has not
    stepped yet gets its state created first (a step with zero gradients and lr 0).

    Raises:
        ValueError: the optimizer has parameters that are not ``model``'s.
    """
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    try:
        return get_optimizer_state_dict(model, optimizer)
    except (KeyError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"cannot name the optimizer's parameters from its model: {type(e).__name__}: {e}"
        ) from e


def apply_model_state(model: torch.nn.Module, state: Mapping[str, Any], strict: bool) -> None:
    """Loads a state from :func:`model_state` (after DCP filled it) into ``model``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, dict(state), options=StateDictOptions(strict=strict))


def apply_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]
) -> None:
    """Loads a state from :func:`optimizer_state` (after DCP filled it) into ``optimizer``."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, dict(state))


def stage(state: Any, reuse: Any = None) -> Any:
    """A copy of ``state`` on CPU that shares no memory with it: DTensors keep their mesh
    and placements with a copied local shard. ``reuse`` is an earlier copy whose tensors
    (same shape and dtype) are overwritten instead of allocated again.

    Example:
        >>> t = torch.zeros(2); s = stage({"w": t}); t += 1; s["w"].tolist()
        [0.0, 0.0]
    """
    if is_dtensor(state):
        from torch.distributed.tensor import DTensor

        old = reuse.to_local() if is_dtensor(reuse) else None
        local = stage(state.to_local(), old)
        if old is not None and local is old:
            return reuse
        return DTensor.from_local(
            local,
            state.device_mesh,
            state.placements,
            run_check=False,
            shape=state.shape,
            stride=state.stride(),
        )
    if isinstance(state, torch.Tensor):
        t = state.detach()
        if (
            isinstance(reuse, torch.Tensor)
            and not is_dtensor(reuse)
            and reuse is not state
            and reuse.device.type == "cpu"
            and reuse.shape == t.shape
            and reuse.dtype == t.dtype
            and reuse.is_contiguous()
        ):
            return reuse.copy_(t)
        return t.clone() if t.device.type == "cpu" else t.to("cpu", copy=True)
    if isinstance(state, Mapping):
        old = reuse if isinstance(reuse, Mapping) else {}
        out = {k: stage(v, old.get(k)) for k, v in state.items()}
        return collections.OrderedDict(out) if isinstance(state, collections.OrderedDict) else out
    if isinstance(state, (list, tuple)):
        old = reuse if isinstance(reuse, (list, tuple)) and len(reuse) == len(state) else None
        items = [stage(v, old[i] if old is not None else None) for i, v in enumerate(state)]
        return items if isinstance(state, list) else tuple(items)
    return state


# --- DCP saves and loads ----------------------------------------------------------------------


def io_group(background: bool = False) -> Any:
    """The process group DCP's own collectives use; ``None`` in a job of one.

    Foreground calls use the CPU group of the job (the default group under gloo, the gloo
    side group under NCCL). A background save gets a gloo group of its own, created on
    first use by every rank (call it from a collective point): collectives from two
    threads must never share a group.
    """
    rt = runtime.active()
    if rt is None or rt.env.world_size == 1:
        return None
    if not background:
        return rt.cpu_group if rt.cpu_group is not None else dist.group.WORLD
    group = rt.subgroups.get(_BACKGROUND)
    if group is None:
        group = rt.subgroups[_BACKGROUND] = dist.new_group(
            ranks=list(range(rt.env.world_size)), backend="gloo", timeout=rt.timeout
        )
    return group


def save_state(
    state: dict[str, Any],
    file_name: str,
    write_file: Callable[[str, Callable[[BinaryIO], None]], tuple[int, str]],
    group: Any = None,
) -> dict[str, Any]:
    """Saves ``state`` with DCP: this rank's chunks into ``file_name``; a collective.

    DCP plans who writes what (a replicated tensor is written once, by one rank); each
    rank writes its chunks with ``write_file`` (which returns once the file is durable).

    Args:
        state: ``{key: state dict}``; DTensors are saved as their local shards.
        file_name: this rank's file (different on every rank).
        write_file: ``write_file(name, produce) -> (size, sha256)``.
        group: from :func:`io_group`.

    Returns:
        The save's metadata as plain data (:func:`~.dcp_storage.encode_metadata`),
        listing every file written by any rank with its size and SHA-256, on every rank.

    Raises:
        ShardedStateError: on every rank, when any rank failed.
    """
    import torch.distributed.checkpoint as dcp

    from .dcp_storage import ShardWriter, encode_metadata

    writer = ShardWriter(file_name, write_file)
    try:
        with _quiet():
            metadata = dcp.save(
                state, storage_writer=writer, process_group=group, no_dist=group is None
            )
    except BaseException as e:
        _reraise(e, "saving sharded state")
    return encode_metadata(metadata)


def load_state(
    state: dict[str, Any],
    metadata: Any,
    read_file: Callable[
        [str, list[tuple[int, int, Any, Any]], Callable[[int, memoryview], None]], None
    ],
    strict: bool = True,
    group: Any = None,
) -> None:
    """Fills ``state`` (the target's own state dicts, DTensors included) from a save made by
    :func:`save_state` at any world size; a collective. Each rank reads only the chunks its
    shards need, through ``read_file``, each checked against its own digest (a chunk that
    fills a target tensor exactly is read into it in place, then checked: after a failed
    load the objects may hold part of the checkpoint; load a good one).

    Args:
        state: ``{key: state dict}``, filled in place.
        metadata: what :func:`save_state` returned.
        read_file: ``read_file(name, spans, on_span)``: reads the ``(start, length,
            digest, into)`` spans of file ``name`` in order (``digest`` an ``ItemDigest``; into ``into``, a target
            tensor's bytes, when given), checks each against its digest (raising on a
            mismatch) and calls ``on_span(index, bytes)``.
        strict: also refuse entries of the checkpoint that the target does not have.
        group: from :func:`io_group`.

    Raises:
        ValueError: the target asks for entries the checkpoint lacks (or, with
            ``strict``, the checkpoint holds entries the target lacks).
        ShardedStateError: on every rank, when reading failed on any rank.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict

    from .dcp_storage import SafeLoadPlanner, ShardReader, decode_metadata

    md = decode_metadata(metadata)
    wanted = set(flatten_state_dict(state)[0])
    saved = set(md.state_dict_metadata)
    missing = sorted(wanted - saved)
    if missing and strict:
        raise ValueError(
            f"the checkpoint has no entries {missing[:5]}{' …' if len(missing) > 5 else ''} "
            f"that the objects to load have (it holds {len(saved)} entries)"
        )
    if strict:
        prefixes = tuple(f"{k}." for k in state)
        unexpected = sorted(k for k in saved - wanted if k.startswith(prefixes) or k in state)
        if unexpected:
            raise ValueError(
                f"the checkpoint holds entries {unexpected[:5]}"
                f"{' …' if len(unexpected) > 5 else ''} that the objects to load do not have "
                "(strict=True)"
            )
    reader = ShardReader(md, read_file)
    try:
        with _quiet():
            dcp.load(
                state,
                storage_reader=reader,
                planner=SafeLoadPlanner(allow_partial_load=not strict),
                process_group=group,
                no_dist=group is None,
            )
    except BaseException as e:
        _reraise(e, "loading sharded state")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silences DCP's warning that a job of one saves or loads in a single process (it is
    what we ask for)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _reraise(error: BaseException, what: str) -> None:
    """DCP reports failures as ``CheckpointException`` (a ``BaseException``) holding each
    failing rank's exception: raise the lowest failing rank's error on every rank, as an
    exception of its own type when it can be rebuilt from a message."""
    from torch.distributed.checkpoint.api import CheckpointException

    if not isinstance(error, CheckpointException):
        raise error
    failures = {rank: pair[0] for rank, pair in sorted(error.failures.items())}
    if not failures:
        raise ShardedStateError(f"{what} failed", {}) from None
    rank, first = next(iter(failures.items()))
    others = f" (and on ranks {sorted(failures)[1:]})" if len(failures) > 1 else ""
    message = f"{what} failed on rank {rank}{others}: {first}"
    try:
        rebuilt = type(first)(message)
    except Exception:
        rebuilt = None
    if isinstance(rebuilt, Exception) and not isinstance(first, (KeyError,)):
        rebuilt.failures = failures  # type: ignore[attr-defined]
        raise rebuilt from first
    raise ShardedStateError(message, failures) from first
