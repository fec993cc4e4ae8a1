"""Fixtures for the adapter server: the tiny base, real peft adapters in moto S3, and a
server process started the way the Deployment starts it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubetune.devenv.s3 import LoopbackS3, free_port
from kubetune.devenv.tinymodel import TinyModelConfig, tiny_model_dir
from kubetune.workers import objectstore
from kubetune.workers.manifest import MANIFEST_NAME, Manifest, describe_files, sha256_bytes

BUCKET = "kubetune-serve"
BASE_URI = f"s3://{BUCKET}/models/tiny"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base_dir: Path, out_dir: Path, seed: int, rank: int = 8, base_uri=BASE_URI):
    """A real LoRA adapter with random (non-zero) A and B, so it changes the base's answers;
    written by peft as safetensors, with the trainer's manifest.json. Returns its sha256."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    return write_manifest(out_dir, rank, base_uri)


def write_manifest(out_dir: Path, rank: int, base_uri: str, files: dict | None = None) -> str:
    manifest = Manifest(
        kind="adapter",
        files=files if files is not None else describe_files(out_dir),
        base_model={"uri": base_uri},
        method={"type": "lora", "rank": rank, "alpha": 2 * rank, "targetModules": TARGETS},
    )
    raw = manifest.to_json()
    (out_dir / MANIFEST_NAME).write_bytes(raw)
    return sha256_bytes(raw)


def upload_dir(client, directory: Path, uri: str) -> None:
    dest = objectstore.S3Uri.parse(uri)
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        objectstore.upload_file(client, path, dest.join(path.relative_to(directory).as_posix()))


@pytest.fixture(scope="session")
def tiny_base() -> Path:
    return tiny_model_dir()


@pytest.fixture(scope="session")
def s3():
    with LoopbackS3() as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture(scope="session")
def s3_base(s3, tiny_base) -> str:
    upload_dir(s3.client(), tiny_base, BASE_URI)
    return BASE_URI


@dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    config_path: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def get_json(self, path: str):
        status, body = self.get(path)
        return status, json.loads(body)

    def write_config(self, config: dict) -> None:
        """Replace the file the way a ConfigMap update does: new content, atomically."""
        staging = self.config_path.with_suffix(".tmp")
        staging.write_text(json.dumps(config))
        os.replace(staging, self.config_path)

    def adapters(self) -> dict[str, dict]:
        return {a["name"]: a for a in self.get_json("/v1/adapters")[1]["adapters"]}

    def wait_for(self, predicate, what: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.log_path.read_text()[-3000:]}")
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(
            f"timed out waiting for {what}; log: {self.log_path.read_text()[-3000:]}"
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        self.wait_for(lambda: self._ready(), "/readyz", timeout)

    def _listening(self) -> bool:
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False

    def _ready(self) -> bool:
        try:
            return self.get("/readyz")[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(tmp_path: Path, s3: LoopbackS3, config: dict) -> ServerProcess:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    port = free_port()
    log_path = tmp_path / "server.log"
    env = {**os.environ, **s3.env(), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable,
        "-m",
        "kubetune.workers.serve",
        "--config",
        str(config_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--threads",
        "1",
        "--poll-seconds",
        "0.5",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(process, port, config_path, log_path)
    try:
        server.wait_for(lambda: server._listening(), "the port", 60)
    except BaseException:
        server.stop()
        raise
    return server


def other_base_dir() -> Path:
    """A tiny model of another shape (hidden 32): its adapters must be refused."""
    return tiny_model_dir(TinyModelConfig(hidden_size=32, intermediate_size=64))
