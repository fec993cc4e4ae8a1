"""Plain helpers of the trainer tests (spec files, adapter comparison).

They live apart from conftest.py so that test modules import them by a name of their
own: `conftest` is a different module in each test folder, and which one `import
conftest` finds depends on what else pytest collected.
"""

from __future__ import annotations

import sys
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
