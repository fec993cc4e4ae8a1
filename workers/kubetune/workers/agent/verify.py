"""Checks an adapter must pass before it touches the served model.

A bad adapter must fail alone with a message a user can act on, so each check raises
AdapterRejected with the reason, before peft sees the files: peft would otherwise fail
half-way through injecting layers (leaving the model altered), or unpickle a .bin file,
which runs arbitrary code. The agent runs these before vLLM sees an adapter; vLLM's own
checks come after (and would fail later, with less to say). Only safetensors headers are
read (framework="numpy"): the agent image has no torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from kubetune.workers.manifest import (
    MANIFEST_NAME,
    PICKLE_SUFFIXES,
    Manifest,
    ManifestError,
    sha256_bytes,
    verify_directory,
)

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
LORA_KEY_PREFIX = "base_model.model."


class AdapterRejected(ValueError):
    """The adapter cannot be served here; the message says why."""


def check_files(
    directory: Path, expected_sha256: str | None, only_listed: bool = False
) -> tuple[Manifest, str]:
    """manifest.json present and pinned (when the spec pins it); every file matches it;
    no pickle anywhere, listed or not; with `only_listed`, no file the manifest does not
    vouch for (vLLM reads more than the weights from an adapter's folder). Returns the
    manifest and its own sha256."""
    names = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    pickled = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickled:
        raise AdapterRejected(
            f"pickle files are refused (they run code when loaded); found {', '.join(pickled)}; "
            "save the adapter with safetensors"
        )
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise AdapterRejected("no manifest.json under the prefix: the adapter is incomplete")
    raw = manifest_path.read_bytes()
    actual = sha256_bytes(raw)
    if expected_sha256 and actual != expected_sha256.lower():
        raise AdapterRejected(
            f"manifest.json sha256 {actual} differs from the pinned sha256 {expected_sha256}"
        )
    try:
        manifest = Manifest.from_json(raw)
        verify_directory(directory, manifest)
    except ManifestError as exc:
        raise AdapterRejected(f"integrity check failed: {exc}") from exc
    for required in (WEIGHTS_NAME, CONFIG_NAME):
        if required not in manifest.files:
            raise AdapterRejected(f"{required} is missing from the adapter")
    unlisted = [n for n in names if n != MANIFEST_NAME and n not in manifest.files]
    if only_listed and unlisted:
        raise AdapterRejected(
            f"files not listed in manifest.json (so not verified): {', '.join(unlisted)}"
        )
    return manifest, actual


def _normal(uri: str | None) -> str | None:
    return uri.rstrip("/") if uri else None


def check_base_identity(manifest: Manifest, adapter_config: dict, served_uri: str) -> None:
    """The adapter says which base it was trained on; refuse one trained on another."""
    claimed = _normal(manifest.base_model.get("uri"))
    if claimed is None:
        name = adapter_config.get("base_model_name_or_path") or ""
        claimed = _normal(name) if "://" in name else None
    if claimed is not None and claimed != _normal(served_uri):
        raise AdapterRejected(
            f"adapter was trained on base {claimed}, but this server serves {served_uri}"
        )


def read_adapter_config(directory: Path) -> dict:
    try:
        config = json.loads((directory / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterRejected(f"{CONFIG_NAME} is not readable JSON: {exc}") from exc
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise AdapterRejected(f"peft_type {config.get('peft_type')!r} is not LORA")
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise AdapterRejected(f"{CONFIG_NAME}: r (rank) must be a positive integer, got {rank!r}")
    return config


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes from a safetensors header alone (no tensor is materialised, no torch)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118


def tensor_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    try:
        return header_shapes(directory / WEIGHTS_NAME)
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise AdapterRejected(f"{WEIGHTS_NAME} is not a valid safetensors file: {exc}") from exc


def check_rank(config: dict, max_rank: int) -> None:
    """vLLM sizes its LoRA buffers for --max-lora-rank and refuses larger adapters; say so
    here, in the user's terms, before the adapter reaches vLLM."""
    ranks = [config["r"], *(config.get("rank_pattern") or {}).values()]
    highest = max(r for r in ranks if isinstance(r, int))
    if highest > max_rank:
        raise AdapterRejected(
            f"LoRA rank {highest} exceeds this server's maxLoraRank {max_rank}: retrain with "
            f"r <= {max_rank} or raise maxLoraRank"
        )


def check_shapes(
    shapes: dict[str, tuple[int, ...]],
    rank: int | None,
    base_linears: dict[str, tuple[int, int]],
) -> None:
    """Every lora_A is (rank, in) and lora_B is (out, rank) of a Linear the base really
    has. `rank=None` (the config has a per-module rank_pattern) checks only that A and B
    agree with each other."""
    if not shapes:
        raise AdapterRejected(f"{WEIGHTS_NAME} holds no tensors")
    ranks: dict[str, int] = {}
    for key, shape in sorted(shapes.items()):
        for part, expect in ((".lora_A.weight", "A"), (".lora_B.weight", "B")):
            if not key.endswith(part):
                continue
            module = key[: -len(part)].removeprefix(LORA_KEY_PREFIX)
            if module not in base_linears:
                raise AdapterRejected(
                    f"{key} targets {module}, which the served base does not have"
                )
            if len(shape) != 2:
                raise AdapterRejected(f"{key} has shape {list(shape)}; LoRA weights are matrices")
            in_features, out_features = base_linears[module]
            module_rank = rank or ranks.setdefault(module, shape[0] if expect == "A" else shape[1])
            want = (module_rank, in_features) if expect == "A" else (out_features, module_rank)
            if shape != want:
                raise AdapterRejected(
                    f"{key} has shape {list(shape)} but the served base needs {list(want)} "
                    f"(rank {module_rank}): the adapter was made for a different base model"
                )
            break
        else:
            if "lora_" not in key:
                raise AdapterRejected(f"{key} is not a LoRA tensor")


def verify_adapter(
    directory: Path,
    expected_sha256: str | None,
    served_uri: str,
    base_linears: dict[str, tuple[int, int]],
    max_rank: int | None = None,
    only_listed: bool = False,
) -> tuple[Manifest, str]:
    """All checks, cheapest first. Returns the manifest and its sha256 (the identity)."""
    manifest, identity = check_files(directory, expected_sha256, only_listed)
    config = read_adapter_config(directory)
    check_base_identity(manifest, config, served_uri)
    if max_rank is not None:
        check_rank(config, max_rank)
    rank = config["r"]
    method_rank = manifest.method.get("rank")
    if method_rank is not None and method_rank != rank:
        raise AdapterRejected(f"manifest rank {method_rank} differs from {CONFIG_NAME} r={rank}")
    per_module = bool(config.get("rank_pattern"))
    check_shapes(tensor_shapes(directory), None if per_module else rank, base_linears)
    return manifest, identity
