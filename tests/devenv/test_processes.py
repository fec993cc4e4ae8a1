"""A stopped container leaves no process behind, even when its main process exits on
SIGTERM before its children (vLLM's engine processes outlived its API server so)."""

from __future__ import annotations

import os
import sys
import time

from kubetune.devenv.processes import start_child, stop_child

LEADER = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
open(sys.argv[1], "w").write(str(child.pid))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the leader goes at once
time.sleep(300)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_stopping_a_child_kills_what_its_group_left(tmp_path):
    pid_file = tmp_path / "child.pid"
    process = start_child([sys.executable, "-c", LEADER, str(pid_file)], tmp_path / "log")
    deadline = time.monotonic() + 20
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert alive(child) and os.getpgid(child) == process.pid
    stop_child(process, grace=5)
    assert process.returncode == 0  # the leader exited on SIGTERM, within the grace
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child), "the SIGTERM-ignoring child outlived its stopped group"
