"""Process trees of multi-process tests: find every descendant of a pid and kill them all.

torchrun starts each worker in a session of its own, so killing a launcher's process
group is not enough: the tests collect the whole tree from /proc, then kill every pid.
"""

from __future__ import annotations

import multiprocessing
import os
import signal

__all__ = ["child_context", "descendants", "kill_tree"]


def child_context() -> multiprocessing.context.BaseContext:
    """A multiprocessing context for test children: ``forkserver``, with torch and distengine
    preloaded in the server.

    Plain ``fork`` from the pytest process is not safe once it runs threads (torch's thread
    pools, storage-call watchdogs, a loopback S3 server): a forked child can abort in a
    C++ thread constructor ("terminate called after throwing ... std::system_error").
    The fork server is a single-threaded process, so its children start clean and fast.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "distengine"])
    return ctx


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (children first), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILLs ``pid`` and every descendant (already-gone processes are ignored)."""
    for target in [pid, *descendants(pid)]:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass
