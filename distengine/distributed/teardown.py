"""Releasing the DDP modules distengine created, so that the process group can really die.

Why (torch 2.13, gloo; docs/internals.md, "Platform facts": exit-time abort): gloo runs collectives on
its own worker threads. A bucket all-reduce that DDP launches during ``backward`` captures
the autograd thread-local state, which holds a Python object (the ``contextvars`` context
that ``torch.autograd`` stashes for the backward pass). A worker thread drops its
reference to the finished work a moment after the work completes. If the interpreter is
already finalizing at that moment, the decref needs the GIL, Python ends the thread, and
the forced unwind through a C++ destructor calls ``std::terminate``: SIGABRT ("terminate
called without an active exception") in a job that had finished.

The worker threads are joined only when the ``ProcessGroupGloo`` object is destroyed, and
a DDP module keeps it alive through its C++ ``reducer`` and ``logger`` and its
``process_group`` attribute, whether or not ``destroy_process_group()`` was called. So
``finalize()`` drops those attributes of every module :func:`auto_model` wrapped, before it
destroys the group; the group then dies, its threads are joined while Python is still
fully alive, and the exit is deterministic.
"""

from __future__ import annotations

import weakref

import torch

__all__ = ["release_ddp_modules", "track_ddp_module"]

_DDP_ATTRS = ("reducer", "logger", "process_group")

# Process-wide on purpose: a DDP wrapper holds the process's default group (a process-wide
# object of torch's), and may be tracked before distengine adopts a group the user created.
# Weak references: the set keeps no module alive; finalize() releases and empties it.
_tracked: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def track_ddp_module(module: torch.nn.Module) -> None:
    """Remembers ``module`` (a DDP wrapper created by distengine) for :func:`release_ddp_modules`.

    Example:
        >>> track_ddp_module(torch.nn.Linear(1, 1))
    """
    _tracked.add(module)


def release_ddp_modules() -> int:
    """Drops the C++ reducer, logger and process-group references of every tracked DDP module.

    The wrapped ``.module`` and its parameters stay usable; the DDP wrapper itself cannot
    run forward passes afterwards.

    Returns:
        How many modules were released.

    Example:
        >>> release_ddp_modules() >= 0
        True
    """
    released = 0
    for module in list(_tracked):
        touched = False
        for name in _DDP_ATTRS:
            if name in module.__dict__:
                del module.__dict__[name]
                touched = True
        hooks = module.__dict__.get("_comm_hooks")
        if hooks:
            hooks.clear()  # a hook state may hold a process group too
        released += touched
    _tracked.clear()
    return released
