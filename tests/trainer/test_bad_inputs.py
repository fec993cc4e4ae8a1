"""Bad inputs fail fast with a message naming the field or file, and exit 1 (not 75).

These call the CLI's `main()` in this process (no training starts, so no subprocess is
needed); the same code path writes the termination message the operator shows.
"""

from __future__ import annotations

import json
import re
import signal

import pytest
from kubetune.workers.train.cli import main
from trainer_support import BUCKET, REPO, job_spec

pytestmark = pytest.mark.integration


@pytest.fixture
def run_cli(tmp_path, s3, monkeypatch):
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    previous = signal.getsignal(signal.SIGTERM)

    def run(body: dict) -> tuple[int, str]:
        spec = tmp_path / "spec.yaml"
        spec.write_text(json.dumps(body) if isinstance(body, dict) else body)
        term = tmp_path / "termination.json"
        code = main(["--spec", str(spec), "--no-ray", "--status-port", "-1",
                     "--termination-log", str(term)])
        summary = json.loads(term.read_text())
        assert summary["result"] == "Failed"
        return code, summary["message"]

    yield run
    signal.signal(signal.SIGTERM, previous)


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return f"file://{path}"


def test_missing_s3_dataset_names_the_uri_and_the_s3_error(run_cli, tiny_model):
    uri = f"s3://{BUCKET}/missing.jsonl"
    code, message = run_cli(job_spec(tiny_model, "bad", **{"dataset.uri": uri}))
    assert code == 1
    assert message == f"dataset {uri}: NoSuchKey"


def test_malformed_row_names_the_line(run_cli, tiny_model, tmp_path):
    good = json.dumps({"instruction": "a", "output": "b"})
    uri = write(tmp_path, "bad.jsonl", f"{good}\n{good}\n{{\"instruction\": \n")
    code, message = run_cli(job_spec(tiny_model, "bad", **{"dataset.uri": uri}))
    assert code == 1
    assert message.startswith(f"dataset {uri} line 3: not valid JSON")


def test_wrong_format_names_the_missing_fields(run_cli, tiny_model):
    uri = f"file://{REPO}/examples/data/tiny-chat.jsonl"
    code, message = run_cli(job_spec(tiny_model, "bad", **{"dataset.uri": uri}))
    assert code == 1
    assert re.fullmatch(rf"dataset {uri} line \d+: alpaca rows need string field\(s\) "
                        r"instruction, output \(row has: messages\)", message), message


def test_invalid_spec_names_the_field(run_cli, tiny_model):
    code, message = run_cli(job_spec(tiny_model, "bad", **{"training.learningRate": -1}))
    assert code == 1
    assert "spec.training.learningRate" in message


def test_missing_base_model_names_the_uri(run_cli, tiny_model):
    code, message = run_cli(job_spec(tiny_model, "bad", **{"baseModel.uri": "file:///no/model"}))
    assert code == 1
    assert message == "baseModel file:///no/model: no config.json at /no/model"


def test_hub_model_refused_when_offline(run_cli, tiny_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, message = run_cli(job_spec(tiny_model, "bad", **{"baseModel.uri": "hf://org/model"}))
    assert code == 1
    assert "hub is offline (HF_HUB_OFFLINE)" in message


def test_dataset_too_small_for_one_step(run_cli, tiny_model, tmp_path):
    row = json.dumps({"text": "The kiwi is green."})
    uri = write(tmp_path, "small.jsonl", "\n".join([row] * 5))
    body = job_spec(tiny_model, "bad", **{"dataset.uri": uri, "dataset.format": "text",
                                          "dataset.evalFraction": 0.0})
    code, message = run_cli(body)
    assert code == 1
    assert "5 training sequences, but one optimizer step needs 8" in message


def test_yaml_spec_without_name_is_refused(run_cli):
    code, message = run_cli("apiVersion: kubetune.dev/v1alpha1\nkind: FineTuneJob\nspec: {}\n")
    assert code == 1
    assert "metadata.name is missing" in message
