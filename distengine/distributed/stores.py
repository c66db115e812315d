"""Connections to the job's store: the one the process group uses, and one for the watchdog.

Without a launcher agent, rank 0 hosts a TCPStore at ``MASTER_ADDR:MASTER_PORT`` and the
others connect to it. Under torchrun's agent (or :func:`spawn`'s parent) the store is
hosted outside the ranks and every rank is a client.
"""

from __future__ import annotations

from datetime import timedelta

import torch.distributed as dist

from .env import LauncherEnv

__all__ = ["connect_store", "watch_connection"]


def connect_store(env: LauncherEnv, timeout: timedelta) -> tuple[dist.Store, dist.Store]:
    """Connects to (or, on rank 0 without an agent, hosts) the job's store.

    Args:
        env: this process's launcher variables.
        timeout: bound on connecting and on every store operation.

    Returns:
        ``(connection, store)``: keep ``connection`` alive as long as the process group;
        ``store`` is what ``init_process_group`` gets (attempt-prefixed under an agent).
    """
    if env.hosted_store:
        # Under torchrun's agent the store outlives attempts; a restarted attempt must not
        # read the dead attempt's peer addresses, so each attempt gets its own prefix
        # (docs/internals.md, "Platform facts": torchrun restarts with gloo).
        base = dist.TCPStore(
            env.master_addr, env.master_port, None, is_master=False, timeout=timeout
        )
        return base, dist.PrefixStore(f"attempt_{env.restart_count}", base)
    base = dist.TCPStore(
        env.master_addr,
        env.master_port,
        env.world_size,
        is_master=env.rank == 0,
        timeout=timeout,
        wait_for_workers=False,
    )
    return base, base


def watch_connection(env: LauncherEnv, timeout: timedelta) -> dist.Store:
    """A second connection for the watchdog thread, so it never shares a socket with the main thread."""
    conn = dist.TCPStore(env.master_addr, env.master_port, None, is_master=False, timeout=timeout)
    store: dist.Store = conn
    if env.hosted_store:
        store = dist.PrefixStore(f"attempt_{env.restart_count}", conn)
    return dist.PrefixStore("distengine", store)
