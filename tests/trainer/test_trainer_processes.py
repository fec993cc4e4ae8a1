"""The trainer ends every process it started: its children, orphans of theirs (re-parented
to it, a subreaper), processes in sessions of their own, and ones that ignore SIGTERM.

The subject is a small Python process that does what the trainer's __main__ does
(`become_subreaper`, then `end_descendants`), so that this test process itself never
becomes a subreaper.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from trainer_support import alive, proc_stat

from kubetune.workers.train.procs import parse_stat

SUBJECT = textwrap.dedent("""
    import json, subprocess, sys, time
    from kubetune.workers.train import procs

    assert procs.become_subreaper()
    subprocess.Popen(["sleep", "300"])                                   # a child
    subprocess.Popen(["sh", "-c", "sleep 300 & echo $! > orphan; exit"]).wait()  # an orphan
    subprocess.Popen(["setsid", "sh", "-c", "sleep 300"])                # its own session
    subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 300"])            # ignores SIGTERM
    deadline = time.time() + 10
    while len(procs.descendants(procs.os.getpid())) < 4 and time.time() < deadline:
        time.sleep(0.05)
    before = procs.descendants(procs.os.getpid())
    began = time.monotonic()
    ended = procs.end_descendants(grace=0.3, timeout=5)
    print(json.dumps({"before": before, "ended": ended, "orphan": int(open("orphan").read()),
                      "seconds": time.monotonic() - began,
                      "after": procs.descendants(procs.os.getpid())}))
""")


def test_every_descendant_is_ended_orphans_and_stubborn_ones_included(tmp_path):
    out = subprocess.run([sys.executable, "-c", SUBJECT], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["orphan"] in report["before"]  # re-parented to the subreaper
    assert len(report["before"]) >= 4 and set(report["before"]) <= set(report["ended"])
    assert report["after"] == []
    assert report["seconds"] < 3  # SIGKILL after the grace for the one ignoring SIGTERM
    assert [pid for pid in report["ended"] if alive(pid)] == []


def test_stat_lines_with_odd_command_names_parse():
    assert parse_stat("42 (a) b (c) S 7 42 42 0 -1") == (42, "S", 7)
    state, ppid, _ = proc_stat(subprocess.os.getpid())
    assert state in ("R", "S") and ppid > 0
