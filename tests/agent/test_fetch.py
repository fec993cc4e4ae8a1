"""One adapter's download and verification (moto S3, real peft files): the final folder,
the copy found again after an agent restart, and which failures are worth a retry."""

import pytest
from agent_support import BASE_URI, BUCKET, MAX_LORA_RANK
from kubetune.devenv.s3 import free_port
from kubetune.workers import objectstore
from kubetune.workers.agent.basemodel import base_linears
from kubetune.workers.agent.config import AdapterConfig
from kubetune.workers.agent.fetch import AdapterFetcher, Checks, TransientError
from kubetune.workers.agent.verify import AdapterRejected
from lora_adapters import upload_dir

pytestmark = pytest.mark.integration


def fetcher(tmp_path, tiny_model_path, endpoint: str) -> AdapterFetcher:
    checks = Checks(BASE_URI, MAX_LORA_RANK, lambda: base_linears(tiny_model_path))
    return AdapterFetcher(tmp_path / "adapters",
                          lambda: objectstore.make_client(endpoint, "us-east-1"), checks)


def test_verified_copy_lands_in_a_folder_named_by_its_manifest(
        tmp_path, agent_s3, tiny_model_path, stored_adapters, monkeypatch):
    for key, value in agent_s3.env().items():
        monkeypatch.setenv(key, value)
    good = stored_adapters["good1"]
    fetched = fetcher(tmp_path, tiny_model_path, agent_s3.endpoint).fetch(
        AdapterConfig(name="a", uri=good.uri))
    assert fetched.identity == good.sha256
    assert fetched.path == tmp_path / "adapters" / f"a-{good.sha256[:16]}"
    assert sorted(p.name for p in fetched.path.iterdir()) == sorted(
        p.name for p in good.path.iterdir())
    assert [p.name for p in (tmp_path / "adapters").iterdir()] == [fetched.path.name]

    # The agent restarted, the volume did not: a pinned copy on disk needs no storage.
    offline = fetcher(tmp_path, tiny_model_path, f"http://127.0.0.1:{free_port()}")
    pinned = AdapterConfig(name="a", uri=good.uri, sha256=good.sha256)
    assert offline.fetch(pinned) == fetched
    with pytest.raises(TransientError, match="download from .* failed"):
        offline.fetch(AdapterConfig(name="a", uri=good.uri))  # unpinned: must ask storage

    # A copy on disk that no longer verifies is fetched again, not trusted.
    (fetched.path / "adapter_config.json").write_text("{}")
    with pytest.raises(TransientError):
        offline.fetch(pinned)
    assert not fetched.path.exists()


def test_rejections_name_the_reason_and_leave_nothing(tmp_path, agent_s3, tiny_model_path,
                                                      stored_adapters, monkeypatch):
    for key, value in agent_s3.env().items():
        monkeypatch.setenv(key, value)
    fetch = fetcher(tmp_path, tiny_model_path, agent_s3.endpoint).fetch
    good = stored_adapters["good1"]
    with pytest.raises(AdapterRejected, match="differs from the pinned sha256"):
        fetch(AdapterConfig(name="a", uri=good.uri, sha256="0" * 64))
    with pytest.raises(AdapterRejected, match="no objects under"):
        fetch(AdapterConfig(name="a", uri=good.uri + "-missing"))
    with pytest.raises(AdapterRejected, match="LoRA rank 32 exceeds"):
        fetch(AdapterConfig(name="a", uri=stored_adapters["overrank"].uri))

    uri = f"s3://{BUCKET}/adapters/with-extra"  # vLLM would read it; nothing vouches for it
    upload_dir(agent_s3.client(), good.path, uri)
    agent_s3.client().put_object(Bucket=BUCKET, Key="adapters/with-extra/tokenizer.json", Body=b"{}")
    with pytest.raises(AdapterRejected, match=r"not listed in manifest.json .*: tokenizer.json"):
        fetch(AdapterConfig(name="a", uri=uri))
    assert list((tmp_path / "adapters").iterdir()) == []
