"""Plain helpers of the trainer tests (spec files, adapter comparison).

They live apart from conftest.py so that test modules import them by a name of their
own: `conftest` is a different module in each test folder, and which one `import
conftest` finds depends on what else pytest collected.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
BUCKET = "kubetune-out"


def job_spec(model_dir: Path, name: str, **overrides) -> dict:
    """The shared small run: 24 QLoRA steps on tiny-alpaca, checkpoint every 8."""
    spec = {
        "baseModel": {"uri": f"file://{model_dir}"},
        "dataset": {"uri": f"file://{REPO}/examples/data/tiny-alpaca.jsonl",
                    "format": "alpaca", "evalFraction": 0.1},
        "method": {"type": "qlora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.05}},
        "training": {"maxSteps": 24, "learningRate": 3e-3, "batchSize": 8,
                     "maxSeqLength": 64, "warmupSteps": 2, "seed": 7},
        "spot": {"enabled": True, "checkpointIntervalSteps": 8, "checkpointBudgetSeconds": 25},
        "output": {"uri": f"s3://{BUCKET}/runs"},
    }
    for path, value in overrides.items():
        node = spec
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": "team-a", "uid": "u-" + name}, "spec": spec}


def adapter_tensors(client, name: str) -> dict:
    """The published adapter's tensors, read back through its manifest (verified)."""
    from kubetune.workers.manifest import Manifest
    from safetensors.torch import load

    prefix = f"runs/team-a/{name}/adapter"
    manifest = Manifest.from_json(
        client.get_object(Bucket=BUCKET, Key=f"{prefix}/manifest.json")["Body"].read())
    data = client.get_object(Bucket=BUCKET, Key=f"{prefix}/adapter_model.safetensors")["Body"].read()
    from kubetune.workers.manifest import sha256_bytes

    assert sha256_bytes(data) == manifest.files["adapter_model.safetensors"]["sha256"]
    return load(data)


def assert_same_adapter(left: dict, right: dict, atol: float = 1e-5) -> None:
    import torch

    assert sorted(left) == sorted(right)
    for key in left:
        assert torch.allclose(left[key], right[key], atol=atol, rtol=1e-4), key


def assert_identical_adapter(left: dict, right: dict) -> None:
    """Bitwise equality: what resume promises (same dtypes, shapes and every bit)."""
    import torch

    assert sorted(left) == sorted(right)
    for key in left:
        assert left[key].dtype == right[key].dtype, key
        assert torch.equal(left[key], right[key]), (
            key, float((left[key].double() - right[key].double()).abs().max()))


# processes ----------------------------------------------------------------------------

MARK_ENV = "KUBETUNE_TEST_MARK"  # set on each trainer; every process it starts inherits it


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])


def alive(pid: int, started: int | None = None) -> bool:
    """Running (not a zombie) and, when `started` is given, the same process as then."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X") and started in (None, stat[2])


def marked_processes(mark: str) -> list[int]:
    """Live processes other than this one whose environment holds MARK_ENV=mark."""
    wanted = f"{MARK_ENV}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in environ and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


class ProcessWatch:
    """Samples the descendants of `root` (by parent pid, through /proc) while it runs,
    remembering each with its start time, so that after `root` exits one can ask which
    of them are still alive. Every 0.1 s is enough: the trainer is a subreaper, so an
    orphan is re-parented to it and stays in its tree until it is ended."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: dict[int, int] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        table = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                stat = proc_stat(int(entry.name))
                if stat is not None:
                    table[int(entry.name)] = stat
        queue = [self.root]
        while queue:
            parent = queue.pop()
            for pid, (_, ppid, started) in table.items():
                if ppid == parent and pid not in queue:
                    self.seen.setdefault(pid, started)
                    queue.append(pid)

    def _run(self) -> None:
        while not self._done.wait(0.1):
            if not alive(self.root):
                return
            self._sample()

    def survivors(self) -> list[int]:
        self._done.set()
        self._thread.join()
        return [pid for pid, started in self.seen.items() if alive(pid, started)]
