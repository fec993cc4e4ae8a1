"""The serving pod: vLLM, kubetune's adapter agent beside it, and the base-model fetch.

  initContainers: fetch-base     (s3:// bases) downloads + verifies the base into /models/base
                  adapter-agent  native sidecar (restartPolicy Always): watches the adapter
                                 list, verifies each adapter, loads it through vLLM's API
  containers:     vllm           vLLM's OpenAI server, LoRA on, runtime loading allowed

The agent is a sidecar rather than a plain second container so that it is up before vLLM
(it waits for vLLM's /health, then loads) and is stopped after vLLM on deletion. Both
share the `models` emptyDir at the same path, so the adapter path the agent hands to
vLLM's `POST /v1/load_lora_adapter` is valid in vLLM's mount namespace too. The pod's
cpu/memory/GPU go to vLLM; the agent and the fetch get small fixed amounts, requests
equal to limits, so the pod stays in the Guaranteed QoS class.
"""

from __future__ import annotations

from kubetune.api import ModelServeSpec
from kubetune.api.modelserve import AGENT_PORT

from ..builders.pods import container_resources, container_security
from ..builders.storage_env import storage_env
from ..config import OperatorConfig
from .lora_slots import lora_slots

CONFIG_DIR = "/etc/kubetune/serve"
CONFIG_KEY = "config.json"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
MODELS_DIR = "/models"
BASE_DIR = f"{MODELS_DIR}/base"
ADAPTER_DIR = f"{MODELS_DIR}/adapters"
PVC_DIR = "/models/pvc"
VLLM_CONTAINER = "vllm"
AGENT_CONTAINER = "adapter-agent"
FETCH_CONTAINER = "fetch-base"
PORT_NAME = "http"
AGENT_PORT_NAME = "agent"
AGENT_RESOURCES = {"cpu": "250m", "memory": "512Mi"}
FETCH_RESOURCES = {"cpu": "1", "memory": "1Gi"}


def vllm_image(spec: ModelServeSpec, config: OperatorConfig) -> str:
    """The spec's image, else vLLM's CUDA image on GPU pools and its CPU image elsewhere."""
    if spec.image:
        return spec.image
    return config.images.vllm if spec.resources.gpus_per_worker > 0 else config.images.vllm_cpu


def base_model_dir(spec: ModelServeSpec) -> str:
    """Where vLLM and the agent read the base: fetched, on the PVC, or in the image."""
    uri = spec.base_model.uri
    if uri.startswith("pvc://"):
        _, _, path = uri[len("pvc://"):].partition("/")
        return f"{PVC_DIR}/{path}".rstrip("/")
    if uri.startswith("file://"):
        return uri[len("file://"):]
    return BASE_DIR


def fetched(spec: ModelServeSpec) -> bool:
    return spec.base_model.uri.startswith("s3://")


def pvc_claim(spec: ModelServeSpec) -> str | None:
    uri = spec.base_model.uri
    return uri[len("pvc://"):].partition("/")[0] if uri.startswith("pvc://") else None


def vllm_args(spec: ModelServeSpec) -> list[str]:
    """`vllm serve` flags from the typed spec; extraArgs last, as the user wrote them."""
    engine, slots = spec.vllm, lora_slots(spec)
    args = [
        "--model", base_model_dir(spec),
        "--served-model-name", spec.base_model.served_name,
        "--host", "0.0.0.0",
        "--port", str(spec.port),
        "--enable-lora",
        "--max-loras", str(slots.max_loras),
        "--max-lora-rank", str(engine.max_lora_rank),
        "--max-cpu-loras", str(slots.max_cpu_loras),
        "--dtype", engine.dtype,
    ]
    optional = (
        ("--max-model-len", engine.max_model_len),
        ("--max-num-seqs", engine.max_num_seqs),
        ("--gpu-memory-utilization", engine.gpu_memory_utilization),
    )
    for flag, value in optional:
        if value is not None:
            args += [flag, str(value)]
    if spec.resources.gpus_per_worker > 1:
        args += ["--tensor-parallel-size", str(spec.resources.gpus_per_worker)]
    if spec.base_model.load_in_4bit:
        args += ["--quantization", "bitsandbytes"]
    if spec.base_model.trust_remote_code:
        args.append("--trust-remote-code")
    return args + list(engine.extra_args)


def _writable_env() -> list[dict]:
    """Every cache under the /tmp emptyDir: the root filesystem is read-only."""
    return [
        {"name": "HOME", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
        {"name": "HF_HOME", "value": "/tmp/huggingface"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


def _fixed(amounts: dict[str, str]) -> dict:
    return {"requests": dict(amounts), "limits": dict(amounts)}


def vllm_container(spec: ModelServeSpec, config: OperatorConfig) -> dict:
    env = [
        *_writable_env(),
        {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"},
        {"name": "VLLM_CACHE_ROOT", "value": "/tmp/vllm"},
        {"name": "TRITON_CACHE_DIR", "value": "/tmp/triton"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
    ]
    if spec.resources.gpus_per_worker == 0 and spec.vllm.cpu_kv_cache_gib is not None:
        env.append({"name": "VLLM_CPU_KVCACHE_SPACE", "value": str(spec.vllm.cpu_kv_cache_gib)})
    return {
        "name": VLLM_CONTAINER,
        "image": vllm_image(spec, config),
        "imagePullPolicy": spec.image_pull_policy or config.images.pull_policy,
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": vllm_args(spec),
        "env": env,
        "ports": [{"name": PORT_NAME, "containerPort": spec.port, "protocol": "TCP"}],
        # vLLM answers /health once the engine is up; compiling and loading a large base
        # can take many minutes, hence the startup probe's long budget.
        "startupProbe": {
            "httpGet": {"path": "/health", "port": PORT_NAME},
            "periodSeconds": 5, "failureThreshold": 360,
        },
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": PORT_NAME},
            "periodSeconds": 5, "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": PORT_NAME},
            "periodSeconds": 10, "failureThreshold": 6,
        },
        "resources": container_resources(spec),
        "securityContext": container_security(),
        "volumeMounts": _model_mounts(spec, read_only=True) + [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
    }


def _kubetune_image(config: OperatorConfig) -> dict:
    """The agent image, for both the sidecar and the base fetch."""
    return {"image": config.images.agent, "imagePullPolicy": config.images.pull_policy}


def _object_store_env(spec: ModelServeSpec, config: OperatorConfig) -> list[dict]:
    return [*_writable_env(), *storage_env(spec.storage, config)]


def _config_and_tmp_mounts() -> list[dict]:
    return [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"}]


def agent_container(spec: ModelServeSpec, config: OperatorConfig) -> dict:
    """A native sidecar: an init container that keeps running (restartPolicy Always)."""
    return {
        "name": AGENT_CONTAINER,
        **_kubetune_image(config),
        "restartPolicy": "Always",
        "command": [
            "python", "-m", "kubetune.workers.agent", "run",
            "--config", CONFIG_PATH,
            "--base-dir", base_model_dir(spec),
            "--adapter-dir", ADAPTER_DIR,
            "--vllm-url", f"http://127.0.0.1:{spec.port}",
            "--host", "0.0.0.0",
            "--port", str(AGENT_PORT),
        ],
        "env": _object_store_env(spec, config),
        "ports": [{"name": AGENT_PORT_NAME, "containerPort": AGENT_PORT, "protocol": "TCP"}],
        # Ready once vLLM is up and every listed adapter is Loaded or Failed: a failed
        # adapter does not hold the others back (the agent's /readyz).
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": AGENT_PORT_NAME},
            "periodSeconds": 2, "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": AGENT_PORT_NAME},
            "periodSeconds": 10, "failureThreshold": 6,
        },
        "resources": _fixed(AGENT_RESOURCES),
        "securityContext": container_security(),
        "volumeMounts": [*_config_and_tmp_mounts(), *_model_mounts(spec, read_only=False)],
    }


def fetch_container(spec: ModelServeSpec, config: OperatorConfig) -> dict:
    """Downloads and verifies an s3:// base before vLLM may read it."""
    return {
        "name": FETCH_CONTAINER,
        **_kubetune_image(config),
        "command": ["python", "-m", "kubetune.workers.agent", "fetch-base",
                    "--config", CONFIG_PATH, "--dest", BASE_DIR],
        "env": _object_store_env(spec, config),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": _fixed(FETCH_RESOURCES),
        "securityContext": container_security(),
        "volumeMounts": [*_config_and_tmp_mounts(), {"name": "models", "mountPath": MODELS_DIR}],
    }


def _model_mounts(spec: ModelServeSpec, read_only: bool) -> list[dict]:
    """`readOnly: false` is left out: the API server drops a false bool, and a desired body
    the live object cannot contain would be patched on every reconcile."""
    mounts = [{"name": "models", "mountPath": MODELS_DIR}]
    if read_only:
        mounts[0]["readOnly"] = True
    if pvc_claim(spec):
        mounts.append({"name": "base-pvc", "mountPath": PVC_DIR, "readOnly": True})
    return mounts


def volumes(spec: ModelServeSpec, config_map: str) -> list[dict]:
    result = [
        {"name": "config", "configMap": {
            "name": config_map, "items": [{"key": CONFIG_KEY, "path": CONFIG_KEY}]}},
        {"name": "models", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
    ]
    claim = pvc_claim(spec)
    if claim:
        result.append({"name": "base-pvc",
                       "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    return result


def containers(spec: ModelServeSpec, config: OperatorConfig) -> tuple[list[dict], list[dict]]:
    """(initContainers, containers) in start order."""
    init = [fetch_container(spec, config)] if fetched(spec) else []
    init.append(agent_container(spec, config))
    return init, [vllm_container(spec, config)]
