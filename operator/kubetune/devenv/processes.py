"""Child processes of the embedded environment that never outlive it.

Each child gets its own session (so a signal reaches its whole process group) and asks
the kernel for SIGKILL when the process that started it dies, even by SIGKILL: a test
run that is killed leaves no API server or pod behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from pathlib import Path

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def start_child(argv: list[str], log_path: Path, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> subprocess.Popen:
    """Start `argv` with stdout and stderr appended to `log_path`."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                start_new_session=True, preexec_fn=_die_with_parent)


def stop_child(process: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM to the process group, SIGKILL after `grace` seconds; then SIGKILL to what
    is left of the group, since the leader may exit before its children (vLLM's engine
    processes outlived its API server so), and a stopped container leaves nothing."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass
    kill_group(process)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL what is left of an exited child's process group, as a container runtime
    ends a container's every process with it (Ray's daemons, a shell's children)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
