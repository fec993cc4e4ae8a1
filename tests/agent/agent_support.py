"""Processes for the agent's tests, started the way the ModelServe pod starts them: the
agent (`python -m kubetune.workers.agent run`) and vLLM's OpenAI server from its venv."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from kubetune.devenv.s3 import free_port
from polling import wait_for  # noqa: F401 (the agent tests import it from here)

BUCKET = "kubetune-agent"
BASE_URI = f"s3://{BUCKET}/models/tiny"
MAX_LORA_RANK = 16


def http(url: str, body: dict | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def agent_config(adapters: list[dict], endpoint: str, max_lora_rank: int = MAX_LORA_RANK,
                 max_loaded_adapters: int | None = None) -> dict:
    config = {
        "baseModel": {"uri": BASE_URI, "servedName": "base"},
        "adapters": adapters,
        "maxLoraRank": max_lora_rank,
        "storage": {"endpoint": endpoint, "region": "us-east-1"},
    }
    if max_loaded_adapters is not None:
        config["maxLoadedAdapters"] = max_loaded_adapters
    return config


@dataclass
class AgentProcess:
    process: subprocess.Popen
    port: int
    config_path: Path
    log_path: Path
    adapter_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, bytes]:
        return http(self.url + path)

    def get_json(self, path: str):
        status, body = self.get(path)
        return status, json.loads(body)

    def adapters(self) -> dict[str, dict]:
        return {a["name"]: a for a in self.get_json("/v1/adapters")[1]["adapters"]}

    def write_config(self, config: dict) -> None:
        """Replace the file as a ConfigMap update does: new content, atomically."""
        staging = self.config_path.with_suffix(".tmp")
        staging.write_text(json.dumps(config))
        os.replace(staging, self.config_path)

    def log(self) -> str:
        return "agent log:\n" + _tail(self.log_path)

    def wait_for(self, predicate, what: str, timeout: float = 60.0):
        def checked():
            if self.process.poll() is not None:
                raise AssertionError(f"agent exited ({self.process.returncode})\n{self.log()}")
            try:
                return predicate()
            except OSError:
                return None

        return wait_for(checked, what, timeout, on_timeout=self.log)

    def wait_settled(self, expected: dict[str, str], timeout: float = 120.0) -> dict[str, dict]:
        """Until exactly these adapters are listed, each in its expected state."""
        def settled():
            adapters = self.adapters()
            states = {n: a["state"] for n, a in adapters.items()}
            return adapters if states == expected else None

        return self.wait_for(settled, f"adapter states {expected}", timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_agent(tmp_path: Path, env: dict, config: dict, base_dir: Path, vllm_url: str,
                check_seconds: float = 0.5, adapter_dir: Path | None = None) -> AgentProcess:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    port = free_port()
    log_path = tmp_path / "agent.log"
    adapter_dir = adapter_dir or tmp_path / "adapters"
    command = [
        sys.executable, "-m", "kubetune.workers.agent", "run",
        "--config", str(config_path), "--base-dir", str(base_dir),
        "--adapter-dir", str(adapter_dir), "--vllm-url", vllm_url,
        "--host", "127.0.0.1", "--port", str(port),
        "--poll-seconds", "0.2", "--check-seconds", str(check_seconds),
        "--termination-log", str(tmp_path / "termination-log"),
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **env})
    agent = AgentProcess(process, port, config_path, log_path, adapter_dir)
    try:
        agent.wait_for(lambda: agent.get("/healthz")[0] == 200, "the agent's port", 30)
    except BaseException:
        agent.stop()
        raise
    return agent


def vllm_python() -> Path:
    """vLLM's interpreter: the bootstrap always builds its virtualenv, so none is a failure."""
    from kubetune.devenv.vllmenv import VENV

    python = VENV / "bin" / "python"
    if not python.exists():
        import pytest

        pytest.fail(f"no vLLM virtualenv at {VENV}: the bootstrap builds it "
                    "(python -m kubetune.devenv.vllmenv build)")
    return python


@dataclass
class VllmProcess:
    """vLLM's OpenAI server on the tiny model, in a process group of its own so that
    `kill()` takes its engine and worker processes down with it (as a container kill)."""

    python: Path
    model_dir: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    max_loras: int = 4
    max_cpu_loras: int = 8
    process: subprocess.Popen | None = None
    start_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> VllmProcess:
        command = [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir), "--served-model-name", "base",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--enable-lora", "--max-loras", str(self.max_loras),
            "--max-lora-rank", str(MAX_LORA_RANK), "--max-cpu-loras", str(self.max_cpu_loras),
            "--max-model-len", "512", "--dtype", "float32",
        ]
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
               "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
        wait_for(self._healthy, "vLLM's /health", 300, interval=0.5,
                 on_timeout=lambda: _tail(self.log_path))
        self.start_seconds = time.monotonic() - started
        return self

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"vLLM exited ({self.process.returncode})\n{_tail(self.log_path)}")
        try:
            return http(self.url + "/health", timeout=5)[0] == 200
        except OSError:
            return False

    def rss_bytes(self) -> int:
        """Resident memory of vLLM's whole process group (API server, engine, worker)."""
        total = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.getpgid(int(entry.name)) != self.process.pid:
                    continue
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except (OSError, ProcessLookupError, ValueError):
                continue
        return total

    def adapters(self) -> dict[str, str]:
        status, body = http(self.url + "/v1/models")
        assert status == 200, body
        return {c["id"]: c["root"] for c in json.loads(body)["data"] if c.get("parent")}

    def kill(self) -> None:
        """SIGKILL to the whole group, then wait until the port is free again."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        wait_for(self._group_gone, "vLLM's processes to exit", 30)

    def _group_gone(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return True
        return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self.kill()
