"""Adapter checks on real files: integrity, pinning, pickle, base identity and shapes."""

import json

import pytest
import torch
from kubetune.workers.manifest import MANIFEST_NAME, Manifest, describe_files, sha256_bytes
from kubetune.workers.agent.verify import AdapterRejected, verify_adapter
from safetensors.torch import save_file

SERVED = "s3://bucket/models/tiny"
BASE_LINEARS = {
    "model.layers.0.self_attn.q_proj": (64, 64),
    "model.layers.0.mlp.up_proj": (64, 128),
}
KEY = "base_model.model.model.layers.0.{}.lora_{}.weight"


def write_adapter(directory, rank=4, a_in=64, up_out=128, base_uri=SERVED, extra=None):
    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            KEY.format("self_attn.q_proj", "A"): torch.zeros(rank, a_in),
            KEY.format("self_attn.q_proj", "B"): torch.zeros(64, rank),
            KEY.format("mlp.up_proj", "A"): torch.zeros(rank, 64),
            KEY.format("mlp.up_proj", "B"): torch.zeros(up_out, rank),
        },
        str(directory / "adapter_model.safetensors"),
    )
    (directory / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": rank, "base_model_name_or_path": "/tmp/x"})
    )
    for name, data in (extra or {}).items():
        (directory / name).write_bytes(data)
    files = {
        p.name: {"sha256": sha256_bytes(p.read_bytes()), "size": p.stat().st_size}
        for p in directory.iterdir()
        if p.name != MANIFEST_NAME
    }
    raw = Manifest(
        kind="adapter", files=files, base_model={"uri": base_uri}, method={"rank": rank}
    ).to_json()
    (directory / MANIFEST_NAME).write_bytes(raw)
    return sha256_bytes(raw)


def test_a_good_adapter_passes_and_its_identity_is_the_manifest_sha(tmp_path):
    sha = write_adapter(tmp_path / "a")
    manifest, identity = verify_adapter(tmp_path / "a", sha, SERVED, BASE_LINEARS)
    assert identity == sha and manifest.method["rank"] == 4


def test_a_pinned_sha_that_differs_is_refused(tmp_path):
    write_adapter(tmp_path / "a")
    with pytest.raises(AdapterRejected, match="differs from the pinned sha256"):
        verify_adapter(tmp_path / "a", "0" * 64, SERVED, BASE_LINEARS)


def test_a_file_changed_after_the_manifest_is_refused(tmp_path):
    write_adapter(tmp_path / "a")
    (tmp_path / "a" / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 5, "base_model_name_or_path": "/tmp/y"})
    )
    with pytest.raises(AdapterRejected, match="adapter_config.json: .*differs from manifest"):
        verify_adapter(tmp_path / "a", None, SERVED, BASE_LINEARS)


def test_a_pickle_file_is_refused_even_when_not_listed(tmp_path):
    write_adapter(tmp_path / "a")
    (tmp_path / "a" / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(AdapterRejected, match="pickle files are refused.*adapter_model.bin"):
        verify_adapter(tmp_path / "a", None, SERVED, BASE_LINEARS)


def test_no_manifest_means_incomplete(tmp_path):
    write_adapter(tmp_path / "a")
    (tmp_path / "a" / MANIFEST_NAME).unlink()
    with pytest.raises(AdapterRejected, match="incomplete"):
        verify_adapter(tmp_path / "a", None, SERVED, BASE_LINEARS)


def test_an_adapter_trained_on_another_base_uri_is_refused(tmp_path):
    write_adapter(tmp_path / "a", base_uri="s3://bucket/models/other")
    with pytest.raises(AdapterRejected, match="trained on base s3://bucket/models/other"):
        verify_adapter(tmp_path / "a", None, SERVED, BASE_LINEARS)


@pytest.mark.parametrize(
    "kwargs, field", [({"a_in": 32}, "q_proj.lora_A"), ({"up_out": 96}, "up_proj.lora_B")]
)
def test_tensor_shapes_must_fit_the_served_base(tmp_path, kwargs, field):
    write_adapter(tmp_path / "a", **kwargs)
    with pytest.raises(AdapterRejected, match=f"{field}.weight has shape .* different base"):
        verify_adapter(tmp_path / "a", None, SERVED, BASE_LINEARS)


def test_a_module_the_base_lacks_is_refused(tmp_path):
    write_adapter(tmp_path / "a")
    with pytest.raises(AdapterRejected, match="which the served base does not have"):
        verify_adapter(tmp_path / "a", None, SERVED, {"model.layers.0.self_attn.q_proj": (64, 64)})


def test_manifest_rank_must_match_adapter_config(tmp_path):
    directory = tmp_path / "a"
    write_adapter(directory)
    manifest = Manifest.from_json((directory / MANIFEST_NAME).read_bytes())
    manifest.method["rank"] = 8
    (directory / MANIFEST_NAME).write_bytes(manifest.to_json())
    with pytest.raises(AdapterRejected, match="manifest rank 8 differs"):
        verify_adapter(directory, None, SERVED, BASE_LINEARS)
    assert describe_files(directory)  # the files themselves are intact


def test_with_a_rank_pattern_a_and_b_must_still_agree(tmp_path):
    from kubetune.workers.agent.verify import check_shapes

    good = {
        KEY.format("self_attn.q_proj", "A"): (6, 64),
        KEY.format("self_attn.q_proj", "B"): (64, 6),
    }
    check_shapes(good, None, BASE_LINEARS)
    bad = {
        KEY.format("self_attn.q_proj", "A"): (6, 64),
        KEY.format("self_attn.q_proj", "B"): (64, 4),
    }
    with pytest.raises(AdapterRejected, match=r"needs \[64, 6\]"):
        check_shapes(bad, None, BASE_LINEARS)
