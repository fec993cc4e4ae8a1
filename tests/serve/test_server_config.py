"""The mounted config file: camelCase fields, errors that name the field."""

import json

import pytest
from kubetune.workers.serve.config import ConfigError, load_config, parse_config


def test_full_config_parses_into_typed_values(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "baseModel": {"uri": "s3://b/m", "loadIn4bit": True, "servedName": "tiny"},
                "adapters": [{"name": "a", "uri": "s3://b/a", "sha256": "ab" * 32}],
                "maxAdaptersInMemory": 2,
                "limits": {"maxPromptTokens": 10, "maxTokens": 5, "maxBodyBytes": 2048},
                "storage": {"endpoint": "http://127.0.0.1:9000", "region": "eu-west-1"},
            }
        )
    )
    config, raw = load_config(path)
    assert raw == path.read_bytes()
    assert config.base_model.load_in_4bit and config.base_model.served_name == "tiny"
    assert config.adapter_map()["a"].sha256 == "ab" * 32
    assert (config.limits.max_prompt_tokens, config.limits.max_tokens) == (10, 5)
    assert config.storage.region == "eu-west-1" and config.max_adapters_in_memory == 2


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "baseModel.uri"),
        ({"baseModel": {"uri": "s3://b/m", "loadIn4bit": "yes"}}, "baseModel.loadIn4bit"),
        ({"baseModel": {"uri": "s3://b/m"}, "adapters": [{"name": "a"}]}, "adapters[0]."),
        (
            {
                "baseModel": {"uri": "s3://b/m"},
                "adapters": [{"name": "a", "uri": "s3://x"}, {"name": "a", "uri": "s3://y"}],
            },
            "adapters[1].name",
        ),
        (
            {"baseModel": {"uri": "s3://b/m"}, "adapters": [{"name": "base", "uri": "s3://x"}]},
            "adapters[0].name",
        ),
        ({"baseModel": {"uri": "s3://b/m"}, "maxAdaptersInMemory": 0}, "maxAdaptersInMemory"),
        ({"baseModel": {"uri": "s3://b/m"}, "limits": {"maxTokens": True}}, "limits.maxTokens"),
    ],
)
def test_bad_fields_are_named(body, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_config(body)


def test_a_file_that_is_not_json_is_a_config_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        load_config(path)
