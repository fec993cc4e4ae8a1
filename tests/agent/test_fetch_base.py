"""`python -m kubetune.workers.agent fetch-base`, the init container: the tiny base from
moto S3 into a fresh folder, verified; bad prefixes exit non-zero with the reason."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from agent_support import BUCKET, agent_config
from lora_adapters import upload_dir
from kubetune.workers.agent.basemodel import MARKER_NAME
from kubetune.workers.manifest import MANIFEST_NAME, Manifest, describe_files

pytestmark = pytest.mark.integration


def with_manifest(source: Path, dest: Path) -> Path:
    """A copy of the base with a manifest.json listing every file's sha256."""
    dest.mkdir()
    for path in source.iterdir():
        (dest / path.name).write_bytes(path.read_bytes())
    (dest / MANIFEST_NAME).write_bytes(Manifest(kind="model", files=describe_files(dest)).to_json())
    return dest


def fetch_base(tmp_path: Path, s3, uri: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
    config = agent_config([], s3.endpoint)
    config["baseModel"]["uri"] = uri
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    dest, termination = tmp_path / "models" / "base", tmp_path / "termination-log"
    result = subprocess.run(
        [sys.executable, "-m", "kubetune.workers.agent", "fetch-base", "--config",
         str(config_path), "--dest", str(dest), "--termination-log", str(termination)],
        capture_output=True, text=True, timeout=120, env={**os.environ, **s3.env()},
    )
    return result, dest, termination


def test_downloads_verifies_and_a_second_run_is_a_no_op(tmp_path, agent_s3, tiny_model_path):
    source = with_manifest(tiny_model_path, tmp_path / "src")
    uri = f"s3://{BUCKET}/bases/verified"
    upload_dir(agent_s3.client(), source, uri)
    result, dest, _ = fetch_base(tmp_path, agent_s3, uri)
    assert result.returncode == 0, result.stderr
    for path in source.iterdir():
        assert (dest / path.name).read_bytes() == path.read_bytes()
    assert json.loads((dest / MARKER_NAME).read_text())["uri"] == uri
    assert [p.name for p in dest.parent.iterdir()] == ["base"]  # no staging left behind

    before = (dest / "model.safetensors").stat().st_mtime_ns
    result, dest, _ = fetch_base(tmp_path, agent_s3, uri)
    assert result.returncode == 0, result.stderr
    assert "already holds" in result.stderr
    assert (dest / "model.safetensors").stat().st_mtime_ns == before


def test_tampered_file_fails_with_the_reason(tmp_path, agent_s3, tiny_model_path):
    source = with_manifest(tiny_model_path, tmp_path / "src")
    (source / "config.json").write_text((source / "config.json").read_text() + " ")
    uri = f"s3://{BUCKET}/bases/tampered"
    upload_dir(agent_s3.client(), source, uri)
    result, dest, termination = fetch_base(tmp_path, agent_s3, uri)
    assert result.returncode == 1
    reason = termination.read_text()
    assert "config.json: size" in reason and "differs from manifest" in reason
    assert reason.strip() in result.stderr
    assert not dest.exists()


def test_pickle_file_is_refused_before_download(tmp_path, agent_s3, tiny_model_path):
    uri = f"s3://{BUCKET}/bases/pickled"
    upload_dir(agent_s3.client(), tiny_model_path, uri)
    agent_s3.client().put_object(Bucket=BUCKET, Key="bases/pickled/pytorch_model.bin", Body=b"x")
    result, dest, termination = fetch_base(tmp_path, agent_s3, uri)
    assert result.returncode == 1
    assert "pickle files are refused" in termination.read_text()
    assert "pytorch_model.bin" in termination.read_text()
    assert not dest.exists()


def test_a_prefix_without_safetensors_is_not_a_model(tmp_path, agent_s3):
    uri = f"s3://{BUCKET}/bases/empty-ish"
    agent_s3.client().put_object(Bucket=BUCKET, Key="bases/empty-ish/config.json", Body=b"{}")
    result, _, termination = fetch_base(tmp_path, agent_s3, uri)
    assert result.returncode == 1
    assert "no *.safetensors weights" in termination.read_text()
    result, _, termination = fetch_base(tmp_path, agent_s3, f"s3://{BUCKET}/bases/nothing-here")
    assert result.returncode == 1 and "no objects under" in termination.read_text()
