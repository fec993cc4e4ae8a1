"""The agent's config file: parsing, the errors a user sees, and the watcher that keeps
the last good config when an edit is bad."""

import json

import pytest
from kubetune.workers.agent.config import AdapterConfig, ConfigError, load_config, parse_config
from kubetune.workers.agent.watcher import ConfigWatcher

SHA = "0" * 64


def body(**overrides) -> dict:
    config = {
        "baseModel": {"uri": "s3://models/tiny", "servedName": "base"},
        "adapters": [{"name": "a", "uri": "s3://bucket/a", "sha256": SHA},
                     {"name": "b", "uri": "s3://bucket/b"}],
        "maxLoraRank": 16,
        "storage": {"endpoint": "http://10.244.1.1:9000", "region": "us-east-1"},
    }
    config.update(overrides)
    return config


def test_parses_the_operator_shape():
    config = parse_config(body(maxAdaptersInMemory=4, limits={}))  # unknown fields: ignored
    assert config.base_model.uri == "s3://models/tiny"
    assert config.adapters == (AdapterConfig(name="a", uri="s3://bucket/a", sha256=SHA),
                               AdapterConfig(name="b", uri="s3://bucket/b"))
    assert config.max_lora_rank == 16
    assert config.storage.endpoint == "http://10.244.1.1:9000"


def test_defaults():
    config = parse_config({"baseModel": {"uri": "s3://models/tiny"}})
    assert (config.base_model.served_name, config.adapters, config.max_lora_rank) == ("base", (), 16)
    assert config.storage.endpoint is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"baseModel": {}}, "baseModel.uri: Field required"),
        ({"adapters": [{"name": "a", "uri": "s3://bucket/a", "sha256": "abc"}]}, "adapters[0].sha256"),
        ({"adapters": [{"name": "a", "uri": "http://x/a"}]}, "adapters[0].uri"),
        ({"adapters": [{"name": "Bad Name", "uri": "s3://bucket/a"}]}, "adapters[0].name"),
        ({"adapters": [{"name": "a", "uri": "s3://bucket/a"}, {"name": "a", "uri": "s3://bucket/b"}]},
         "adapters[1].name 'a' is used twice"),
        ({"adapters": [{"name": "base", "uri": "s3://bucket/a"}]}, "is the base's name"),
        ({"maxLoraRank": 0}, "maxLoraRank"),
    ],
)
def test_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as error:
        parse_config(body(**overrides))
    assert message in str(error.value)


def test_not_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{nope")
    with pytest.raises(ConfigError, match="is not JSON"):
        load_config(path)


def test_watcher_keeps_the_last_good_config_and_reports_the_bad_edit(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(body()))
    config, raw = load_config(path)
    applied, errors = [], []
    watcher = ConfigWatcher(path, raw, applied.append, load_config, on_error=errors.append)
    assert watcher.poll_once() is False  # unchanged

    path.write_text(json.dumps(body(adapters=[{"name": "a", "uri": "nope"}])))
    assert watcher.poll_once() is False and watcher.poll_once() is False
    assert applied == [] and len(errors) == 1  # reported once, not on every poll
    assert "adapters[0].uri" in watcher.error

    path.write_text(raw.decode())  # the bad edit reverted
    assert watcher.poll_once() is False and watcher.error is None

    path.write_text(json.dumps(body(adapters=[])))
    assert watcher.poll_once() is True
    assert applied[-1].adapters == ()
