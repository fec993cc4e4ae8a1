"""Trainer to server, end to end: two adapters trained by the real trainer CLI (QLoRA on
the tiny model, one on alpaca data, one on chat data) land in moto S3, and the adapter
server serves them next to the base. Queried with the official openai client, each of
the three answers the same greedy prompt differently, streamed or not."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from conftest import BUCKET, start_server
from kubetune.workers.manifest import MANIFEST_NAME, sha256_bytes

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "team-a"
OUTPUT_URI = f"s3://{BUCKET}/trained"
PROMPT = "Reverse the word."
MESSAGES = [{"role": "user", "content": "What colour is a kiwi?"}]


def _trainer_helpers():
    """tests/trainer/trainer_support.py (tests/trainer is not on this folder's path)."""
    spec = importlib.util.spec_from_file_location(
        "trainer_support", REPO / "tests" / "trainer" / "trainer_support.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


job_spec = _trainer_helpers().job_spec


def train_specs(tiny_base: Path, base_uri: str) -> dict[str, dict]:
    """Two short QLoRA runs on the served base (the tiny model, read from its S3 copy so
    the manifests name the base the server serves), on different data, so they diverge."""
    common = {
        "baseModel.uri": base_uri,
        "output.uri": OUTPUT_URI,
        "training.maxSteps": 48,
        "training.learningRate": 3e-3,
        "training.maxSeqLength": 64,
        "spot.enabled": False,
    }
    return {
        "alpaca-tuned": job_spec(tiny_base, "alpaca-tuned", **common),
        "chat-tuned": job_spec(
            tiny_base,
            "chat-tuned",
            **common,
            **{
                "dataset.uri": f"file://{REPO}/examples/data/tiny-chat.jsonl",
                "dataset.format": "chat",
                "training.seed": 11,
            },
        ),
    }


def adapter_prefix(job: str) -> str:
    return f"trained/{NAMESPACE}/{job}/adapter"


@pytest.fixture(scope="module")
def trained(s3, s3_base, tiny_base, tmp_path_factory) -> dict[str, dict]:
    """Both runs as concurrent trainer processes; returns {job: termination summary}."""
    workdir = tmp_path_factory.mktemp("training")
    env = {
        **os.environ,
        **s3.env(),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    runs = {}
    for job, body in train_specs(tiny_base, s3_base).items():
        spec_path = workdir / f"{job}.json"
        spec_path.write_text(json.dumps(body))
        term = workdir / f"{job}-termination.json"
        log = open(workdir / f"{job}.log", "wb")  # noqa: SIM115 - closed below
        command = [
            sys.executable, "-m", "kubetune.workers.train", "--spec", str(spec_path),
            "--no-ray", "--status-port", "-1", "--termination-log", str(term),
        ]
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        runs[job] = (process, term, log)
    summaries = {}
    try:
        for job, (process, term, log) in runs.items():
            code = process.wait(timeout=240)
            log.close()
            tail = (workdir / f"{job}.log").read_text(errors="replace")[-3000:]
            assert code == 0, f"{job} exited {code}: {tail}"
            summaries[job] = json.loads(term.read_text())
    finally:
        for process, _, log in runs.values():
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
    return summaries


@pytest.fixture(scope="module")
def server(s3, s3_base, trained, tmp_path_factory):
    client = s3.client()
    chat_manifest = client.get_object(
        Bucket=BUCKET, Key=f"{adapter_prefix('chat-tuned')}/{MANIFEST_NAME}"
    )["Body"].read()
    config = {
        "baseModel": {"uri": s3_base, "servedName": "tiny"},
        "adapters": [
            {"name": "alpaca", "uri": f"s3://{BUCKET}/{adapter_prefix('alpaca-tuned')}"},
            {
                "name": "chat",
                "uri": f"s3://{BUCKET}/{adapter_prefix('chat-tuned')}",
                "sha256": sha256_bytes(chat_manifest),
            },
        ],
        "maxAdaptersInMemory": 4,
        "limits": {"maxPromptTokens": 128, "maxTokens": 32, "maxBodyBytes": 8192},
        "storage": {"endpoint": s3.endpoint},
    }
    process = start_server(tmp_path_factory.mktemp("server"), s3, config)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


MODELS = ("tiny", "alpaca", "chat")


def completion(client, model: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """Greedy completion, non-streamed and streamed: each (text, finish_reason)."""
    args = {"model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0}
    whole = client.completions.create(**args).choices[0]
    chunks = list(client.completions.create(**args, stream=True))
    streamed = "".join(c.choices[0].text for c in chunks)
    return (whole.text, whole.finish_reason), (streamed, chunks[-1].choices[0].finish_reason)


def chat(client, model: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """Greedy chat reply, non-streamed and streamed: each (text, finish_reason)."""
    args = {"model": model, "messages": MESSAGES, "max_tokens": 12, "temperature": 0}
    whole = client.chat.completions.create(**args).choices[0]
    assert whole.message.role == "assistant"
    chunks = [c for c in client.chat.completions.create(**args, stream=True) if c.choices]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    finish = chunks[-1].choices[0].finish_reason
    return (whole.message.content, whole.finish_reason), (streamed, finish)


def test_trainer_published_both_adapters_for_the_served_base(trained, s3, s3_base):
    client = s3.client()
    for job, summary in trained.items():
        assert summary["result"] == "Succeeded" and summary["steps"] == 48, summary
        assert summary["evalLoss"] < summary["initialEvalLoss"], summary
        raw = client.get_object(Bucket=BUCKET, Key=f"{adapter_prefix(job)}/{MANIFEST_NAME}")[
            "Body"
        ].read()
        manifest = json.loads(raw)
        assert summary["adapter"]["sha256"] == sha256_bytes(raw)
        assert manifest["method"]["type"] == "qlora"
        assert manifest["baseModel"]["uri"] == s3_base


def test_models_lists_the_base_and_both_trained_adapters(client, server, trained):
    assert sorted(m.id for m in client.models.list()) == sorted(MODELS)
    adapters = server.adapters()
    assert {name: view["state"] for name, view in adapters.items()} == {
        "alpaca": "Loaded",
        "chat": "Loaded",
    }, adapters
    # The server's identity of each adapter is the sha256 the trainer reported for it.
    assert adapters["alpaca"]["sha256"] == trained["alpaca-tuned"]["adapter"]["sha256"]
    assert adapters["chat"]["sha256"] == trained["chat-tuned"]["adapter"]["sha256"]


def test_completions_differ_per_adapter_and_stream_the_same_text(client):
    answers = {}
    for model in MODELS:
        whole, streamed = completion(client, model)
        assert streamed == whole, (model, whole, streamed)
        answers[model] = whole
    print("completions:", json.dumps(answers))
    assert all(text for text, _ in answers.values()), answers
    assert len({text for text, _ in answers.values()}) == 3, answers


def test_chat_replies_differ_per_adapter_and_stream_the_same_text(client):
    replies = {}
    for model in MODELS:
        whole, streamed = chat(client, model)
        assert streamed == whole, (model, whole, streamed)
        replies[model] = whole
    print("chat:", json.dumps(replies))
    # The alpaca-trained adapter never saw the chat template and learned short answers
    # then EOS: it may stop at once here (an empty reply, finish_reason "stop"), which
    # still differs from the base (never stops) and the chat-trained adapter.
    assert replies["tiny"][0], replies
    assert len({text for text, _ in replies.values()}) == 3, replies
