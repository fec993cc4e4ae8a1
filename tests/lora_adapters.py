"""Real peft LoRA adapters with the trainer's manifest.json, for the tests of everything
that serves them (the adapter agent beside vLLM, the ModelServe tests). Importable from any test as
`lora_adapters` (pytest puts tests/ on sys.path for tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

from kubetune.workers import objectstore
from kubetune.workers.manifest import MANIFEST_NAME, Manifest, describe_files, sha256_bytes

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base_dir: Path, out_dir: Path, seed: int, rank: int = 8, *, base_uri: str,
                 targets: list[str] = TARGETS) -> str:
    """A real LoRA adapter with random (non-zero) A and B, so it changes the base's answers;
    written by peft as safetensors, with the trainer's manifest.json. Returns its sha256."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False)
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
