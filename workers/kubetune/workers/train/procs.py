"""Processes the trainer started: found through /proc and ended before the trainer exits.

Ray leaves processes behind on its own: the GCS and raylet die with the thread that
started them, but the raylet's agents and workers are re-parented and can run on for
many seconds (or ignore SIGTERM), and a process group does not find them (Ray workers
make groups of their own). So the trainer makes itself a child subreaper (orphans of
its descendants become its children instead of init's) and, last thing before it
exits, ends every descendant it has. In a pod the kernel would also end them with PID 1;
run by hand or by a test, this is what keeps a trainer from leaving Ray running.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger("kubetune.train")
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PROC = Path("/proc")


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process (Linux 3.4+); False elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent() -> bool:
    """SIGKILL this process when the thread that started it ends (a trainer killed with
    SIGKILL can end nothing itself); False where prctl is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def parse_stat(text: str) -> tuple[int, str, int]:
    """(pid, state, ppid) from /proc/<pid>/stat; the command name may hold spaces and ')'."""
    pid = int(text.split(" ", 1)[0])
    fields = text[text.rindex(")") + 2 :].split()
    return pid, fields[0], int(fields[1])


def process_table() -> dict[int, tuple[str, int]]:
    """pid -> (state, ppid) of every process visible now."""
    table = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            pid, state, ppid = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # it exited while we looked
        table[pid] = (state, ppid)
    return table


def descendants(root: int, table: dict[int, tuple[str, int]] | None = None) -> list[int]:
    """Live (non-zombie) descendants of `root`, parents before children."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (_, ppid) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, queue = [], list(children.get(root, []))
    while queue:
        pid = queue.pop(0)
        if table[pid][0] not in ("Z", "X"):
            found.append(pid)
        queue.extend(children.get(pid, []))
    return found


def reap_zombies() -> None:
    """Collect exited children (re-parented orphans included) so they leave the table."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def end_descendants(grace: float = 1.0, timeout: float = 5.0) -> list[int]:
    """SIGTERM every descendant, SIGKILL what is left after `grace` seconds, and repeat
    until none is left (one may fork while we look) or `timeout`; returns those ended."""
    me = os.getpid()
    ended: list[int] = []
    began = time.monotonic()
    while True:
        reap_zombies()
        alive = descendants(me)
        if not alive:
            return ended
        waited = time.monotonic() - began
        if waited > timeout:
            log.warning("processes still alive after %.1fs: %s", waited, alive)
            return ended
        fresh = [pid for pid in alive if pid not in ended]
        ended.extend(fresh)
        _signal_all(fresh, signal.SIGTERM)  # once each: Ray's handlers are not re-entrant
        if waited >= grace:
            _signal_all(alive, signal.SIGKILL)
        time.sleep(0.05)
