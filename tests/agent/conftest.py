"""Fixtures for the adapter agent: real peft adapters (good and bad) in moto S3, one vLLM
for the whole session (it takes ~40 s and ~4 GB to start), and agents started as the
ModelServe pod starts them."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from agent_support import (
    BASE_URI,
    BUCKET,
    VllmProcess,
    agent_config,
    http,
    start_agent,
    vllm_python,
)
from lora_adapters import make_adapter, upload_dir, write_manifest
from kubetune.api import ModelServeSpec
from kubetune.operator.modelserve.lora_slots import lora_slots
from kubetune.workers.manifest import MANIFEST_NAME, describe_files


@dataclass(frozen=True)
class StoredAdapter:
    name: str
    uri: str
    sha256: str
    path: Path  # the local copy that was uploaded

    def entry(self, name: str | None = None, pin: bool = True) -> dict:
        """This adapter as a config entry, served under `name`."""
        entry = {"name": name or self.name, "uri": self.uri}
        if pin:
            entry["sha256"] = self.sha256
        return entry


def _rewrite_manifest(directory: Path, rank: int) -> str:
    (directory / MANIFEST_NAME).unlink()
    return write_manifest(directory, rank, BASE_URI)


@pytest.fixture(scope="session")
def agent_s3(loopback_s3):
    loopback_s3.client().create_bucket(Bucket=BUCKET)
    return loopback_s3


@pytest.fixture(scope="session")
def stored_adapters(agent_s3, tiny_model_path, tmp_path_factory) -> dict[str, StoredAdapter]:
    """Adapters in S3 by kind: good1..3 (rank 8), corrupt (a byte changed after the
    manifest), pickled (a .bin beside the safetensors), otherbase (manifest names another
    base), overrank (r=32 > maxLoraRank 16), biased (passes kubetune's checks, but vLLM
    refuses LoRA bias)."""
    root = tmp_path_factory.mktemp("adapters")
    shas = {}
    for i, name in enumerate(("good1", "good2", "good3"), start=1):
        shas[name] = make_adapter(tiny_model_path, root / name, seed=i, base_uri=BASE_URI)

    make_adapter(tiny_model_path, root / "corrupt", seed=4, base_uri=BASE_URI)
    weights = root / "corrupt" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, different sha256
    weights.write_bytes(bytes(data))
    shas["corrupt"] = None

    make_adapter(tiny_model_path, root / "pickled", seed=5, base_uri=BASE_URI)
    (root / "pickled" / "adapter_model.bin").write_bytes(b"\x80\x04N.")  # pickle of None
    shas["pickled"] = None

    shas["otherbase"] = make_adapter(tiny_model_path, root / "otherbase", seed=6,
                                     base_uri="s3://other-bucket/models/other")
    shas["overrank"] = make_adapter(tiny_model_path, root / "overrank", seed=7, rank=32,
                                    base_uri=BASE_URI)

    shutil.copytree(root / "good1", root / "biased")
    config_path = root / "biased" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["bias"] = "all"
    config_path.write_text(json.dumps(config))
    shas["biased"] = _rewrite_manifest(root / "biased", 8)
    assert set(describe_files(root / "biased")) == set(describe_files(root / "good1"))

    client = agent_s3.client()
    stored = {}
    for name, sha in shas.items():
        uri = f"s3://{BUCKET}/adapters/{name}"
        upload_dir(client, root / name, uri)
        stored[name] = StoredAdapter(name, uri, sha, root / name)
    return stored


@pytest.fixture(scope="session")
def vllm(tmp_path_factory, tiny_model_path):
    """One vLLM OpenAI server for the session; `vllm.kill()` then `vllm.start()` restarts
    it on the same port (the agent keeps its URL)."""
    log_path = tmp_path_factory.mktemp("vllm") / "vllm.log"
    # The LoRA slots kubetune gives vLLM on a CPU pool for a default ModelServe.
    slots = lora_slots(ModelServeSpec.model_validate(
        {"baseModel": {"uri": BASE_URI}, "resources": {"gpusPerWorker": 0}}))
    server = VllmProcess(vllm_python(), tiny_model_path, log_path, max_loras=slots.max_loras,
                         max_cpu_loras=slots.max_cpu_loras).start()
    print(f"\nvLLM started in {server.start_seconds:.1f}s, RSS {server.rss_bytes() / 2**30:.2f} GiB")
    yield server
    server.stop()


@pytest.fixture
def clean_vllm(vllm):
    """The session's vLLM with no adapters left from earlier tests (agents are stopped
    without unloading, as a pod's vLLM dies with its agent)."""
    def unload_all():
        for name in vllm.adapters():
            http(vllm.url + "/v1/unload_lora_adapter", {"lora_name": name})

    unload_all()
    yield vllm
    if vllm.process is not None and vllm.process.poll() is None:
        unload_all()


@pytest.fixture
def agents(tmp_path, agent_s3, tiny_model_path):
    """Start agents with `agents(adapters, vllm_url)`; stopped when the test ends.
    `adapter_dir=` gives one the folder of an earlier one (a restarted sidecar)."""
    started = []

    def start(adapters: list[dict], vllm_url: str, adapter_dir: Path | None = None, **config):
        directory = tmp_path / f"agent-{len(started)}"
        directory.mkdir()
        agent = start_agent(directory, agent_s3.env(),
                            agent_config(adapters, agent_s3.endpoint, **config),
                            tiny_model_path, vllm_url, adapter_dir=adapter_dir)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()
