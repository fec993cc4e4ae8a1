"""The README's main-job command, end to end, as a user runs it (minus the bootstrap)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def processes_inside(folder: str) -> list[str]:
    """Processes whose working directory or command line lies in `folder`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(folder) or folder in cmdline:
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found


def test_demo_trains_recovers_from_a_preemption_serves_and_cleans_up(repo):
    result = subprocess.run(
        [sys.executable, "-m", "kubetune.devenv.demo"],
        cwd=repo, capture_output=True, text=True, timeout=1500,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "kubectl apply -f finetune.yaml -> finetunejob.kubetune.dev/support-bot-v1 created" in output
    assert "injecting a spot preemption" in output
    assert re.search(r"kubectl get ftj: support-bot-v1 Recovering", output), "the recovery was not shown"
    summary = json.loads(output.split("summary:\n", 1)[1].split("\n}", 1)[0] + "\n}")
    assert summary["recoveries"] == 1 and summary["errorRetries"] == 0
    assert summary["lostSteps"] == 0
    assert re.fullmatch(r"[0-9a-f]{64}", summary["adapterSha256"])
    assert summary["adapterUri"].startswith("s3://kubetune/adapters/demo/support-bot-v1/adapter")
    assert "through vLLM 0.32.0: base" in output
    assert summary["servedBy"] == "vLLM 0.32.0"
    assert summary["hotLoadedWithoutRestart"] is True
    # The base never saw the task; the adapter learned it (held-out inputs, greedy).
    assert summary["exactMatchBase"] <= 0.1, summary
    assert summary["exactMatchAdapter"] >= 0.9, summary
    # The trainer's own evaluation on the same 100 rows, and the gate it passed.
    assert summary["trainerExactMatchBaseline"] <= 0.1, summary
    assert summary["trainerExactMatchFinal"] >= 0.9, summary
    assert summary["promoted"] is True and "meets the gate" in summary["gate"], summary
    workdir = re.search(r"workdir (\S+)", output).group(1)
    assert processes_inside(workdir) == [], "the demo left processes behind"
