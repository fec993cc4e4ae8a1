"""The adapter server as the Deployment runs it: a real process on 127.0.0.1 serving the
tiny base from moto S3 plus real peft adapters, queried with the official openai client."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import openai
import pytest
import torch
from conftest import (
    BUCKET,
    make_adapter,
    other_base_dir,
    start_server,
    upload_dir,
    write_manifest,
)
from kubetune.workers.manifest import sha256_file

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPT = "Reverse the word."
LIMITS = {"maxPromptTokens": 64, "maxTokens": 32, "maxBodyBytes": 4096}


def adapter_uri(name: str) -> str:
    return f"s3://{BUCKET}/adapters/{name}"


@pytest.fixture(scope="module")
def published(s3, s3_base, tiny_base, tmp_path_factory):
    """Good and bad adapters in S3; returns {name: config entry}."""
    root = tmp_path_factory.mktemp("adapters")
    client = s3.client()
    entries = {}
    for seed, name in enumerate(["alpha", "beta", "gamma"], start=1):
        sha = make_adapter(tiny_base, root / name, seed=seed)
        upload_dir(client, root / name, adapter_uri(name))
        entries[name] = {"name": name, "uri": adapter_uri(name), "sha256": sha}

    # Weights changed after the manifest was written (bit rot, a partial overwrite).
    make_adapter(tiny_base, root / "corrupt", seed=4)
    weights = root / "corrupt" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    upload_dir(client, root / "corrupt", adapter_uri("corrupt"))
    entries["corrupt"] = {"name": "corrupt", "uri": adapter_uri("corrupt")}

    # Intact files, but the spec pins another manifest.
    entries["mispinned"] = {**entries["alpha"], "name": "mispinned", "sha256": "0" * 64}

    # Only a pickled state dict, listed honestly in its manifest.
    pickled = root / "pickled"
    pickled.mkdir()
    torch.save({"w": torch.zeros(2)}, pickled / "adapter_model.bin")
    (pickled / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    files = {
        p.name: {"sha256": sha256_file(p), "size": p.stat().st_size} for p in pickled.iterdir()
    }
    write_manifest(pickled, 8, s3_base, files=files)
    upload_dir(client, pickled, adapter_uri("pickled"))
    entries["pickled"] = {"name": "pickled", "uri": adapter_uri("pickled")}

    # Made for a hidden-size-32 model, though its manifest claims the served base.
    make_adapter(other_base_dir(), root / "otherbase", seed=5)
    upload_dir(client, root / "otherbase", adapter_uri("otherbase"))
    entries["otherbase"] = {"name": "otherbase", "uri": adapter_uri("otherbase")}
    return entries


def config_for(s3, base_uri, entries, names, **extra) -> dict:
    return {
        "baseModel": {"uri": base_uri, "servedName": "tiny"},
        "adapters": [entries[n] for n in names],
        "maxAdaptersInMemory": 8,
        "limits": LIMITS,
        "storage": {"endpoint": s3.endpoint},
        **extra,
    }


INITIAL = ["alpha", "beta", "corrupt", "mispinned", "pickled", "otherbase"]


@pytest.fixture(scope="module")
def server(s3, s3_base, published, tmp_path_factory):
    process = start_server(
        tmp_path_factory.mktemp("server"), s3, config_for(s3, s3_base, published, INITIAL)
    )
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def greedy(client, model: str, prompt: str = PROMPT, **kwargs) -> str:
    result = client.completions.create(
        model=model, prompt=prompt, max_tokens=12, temperature=0, **kwargs
    )
    return result.choices[0].text


@pytest.fixture(scope="module")
def answers(client):
    return {m: greedy(client, m) for m in ("tiny", "alpha", "beta")}


def metric(server, sample: str) -> float:
    for line in server.get("/metrics")[1].decode().splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_models_lists_the_base_and_the_loaded_adapters_only(client):
    assert sorted(m.id for m in client.models.list()) == ["alpha", "beta", "tiny"]


def test_each_adapter_and_the_base_answer_differently_and_greedy_is_repeatable(client, answers):
    assert len(set(answers.values())) == 3, answers
    assert all(answers.values())
    assert greedy(client, "alpha") == answers["alpha"]


def test_usage_counts_prompt_and_completion_tokens(client):
    result = client.completions.create(model="beta", prompt=PROMPT, max_tokens=7, temperature=0)
    assert result.usage.completion_tokens <= 7
    assert result.usage.prompt_tokens == 5  # <s> plus the 4 BPE tokens of the prompt
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    assert result.model == "beta" and result.object == "text_completion"


def test_streamed_completion_joins_to_the_same_text(client, answers):
    chunks = list(
        client.completions.create(
            model="alpha", prompt=PROMPT, max_tokens=12, temperature=0, stream=True
        )
    )
    assert len(chunks) > 1
    assert "".join(c.choices[0].text for c in chunks) == answers["alpha"]
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_chat_uses_the_template_and_streams_the_same_answer(client):
    messages = [{"role": "user", "content": "What colour is a kiwi?"}]
    replies = {}
    for model in ("alpha", "beta"):
        reply = client.chat.completions.create(
            model=model, messages=messages, max_tokens=10, temperature=0
        )
        replies[model] = reply.choices[0].message.content
        assert reply.choices[0].message.role == "assistant"
        assert reply.usage.prompt_tokens > 8  # the template's role markers count too
    assert replies["alpha"] != replies["beta"]
    stream = client.chat.completions.create(
        model="alpha",
        messages=messages,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == replies["alpha"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_stop_sequence_cuts_the_answer(client, answers):
    full = answers["beta"]
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = client.completions.create(
        model="beta", prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop]
    )
    assert cut.choices[0].text == full[: full.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_seed_makes_sampling_repeatable(client):
    def sample(seed):
        return (
            client.completions.create(
                model="alpha", prompt=PROMPT, max_tokens=10, temperature=1.0, top_p=0.9, seed=seed
            )
            .choices[0]
            .text
        )

    assert sample(11) == sample(11)
    assert len({sample(s) for s in range(5)}) > 1


def test_each_bad_adapter_is_failed_with_its_reason(server):
    adapters = server.adapters()
    assert {n: a["state"] for n, a in adapters.items()} == {
        "alpha": "Loaded",
        "beta": "Loaded",
        "corrupt": "Failed",
        "mispinned": "Failed",
        "pickled": "Failed",
        "otherbase": "Failed",
    }
    assert "adapter_model.safetensors: sha256" in adapters["corrupt"]["message"]
    assert "differs from the pinned sha256" in adapters["mispinned"]["message"]
    assert "pickle files are refused" in adapters["pickled"]["message"]
    assert "adapter_model.bin" in adapters["pickled"]["message"]
    assert "different base model" in adapters["otherbase"]["message"]
    assert adapters["alpha"]["sha256"] and adapters["alpha"]["inMemory"]
    status, ready = server.get_json("/readyz")
    assert status == 200 and ready["adapters"]["Failed"] == 4


def test_a_failed_adapter_or_unknown_model_is_an_openai_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        greedy(client, "pickled")
    assert info.value.body["param"] == "model" and "pickle" in info.value.body["message"]
    with pytest.raises(openai.NotFoundError) as info:
        greedy(client, "nobody")
    assert info.value.body["code"] == "model_not_found"


def test_limits_give_400s_naming_the_parameter(client, server):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="alpha", prompt=PROMPT, max_tokens=33)
    assert info.value.body["param"] == "max_tokens" and "32" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="alpha", prompt="kiwi " * 100, max_tokens=2)
    assert info.value.body["param"] == "prompt"
    assert info.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="alpha", messages=[], max_tokens=2)
    assert info.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="alpha", prompt=PROMPT, temperature=3)
    assert info.value.body["param"] == "temperature"
    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(model="alpha", prompt="x" * 5000, max_tokens=2)
    assert info.value.status_code == 413 and "4096 bytes" in info.value.body["message"]
    assert greedy(client, "alpha")  # the connection pool recovers after the 413


def test_metrics_count_requests_tokens_and_adapter_loads(client, server):
    requests = 'kubetune_serve_requests_total{endpoint="/v1/completions",model="beta",status="200"}'
    tokens = 'kubetune_serve_tokens_total{model="beta",kind="completion"}'
    before_requests, before_tokens = metric(server, requests), metric(server, tokens)
    used = sum(
        client.completions.create(
            model="beta", prompt=PROMPT, max_tokens=5, temperature=0
        ).usage.completion_tokens
        for _ in range(2)
    )
    assert metric(server, requests) == before_requests + 2
    assert metric(server, tokens) == before_tokens + used
    assert metric(server, 'kubetune_serve_adapter_loads_total{result="failed"}') == 4
    assert metric(server, 'kubetune_serve_adapter_loads_total{result="loaded"}') == 2
    assert metric(server, 'kubetune_serve_adapters{state="Loaded"}') == 2
    assert metric(server, "kubetune_serve_adapter_load_duration_seconds_count") == 6
    failing = (
        'kubetune_serve_requests_total{endpoint="/v1/completions",model="_unknown",status="404"}'
    )
    assert metric(server, failing) >= 1


def test_concurrent_requests_for_different_adapters_never_mix(client, answers):
    """Requests interleave token by token on one model; each must still see only its own
    adapter from the first token to the last (streamed and not)."""
    from concurrent.futures import ThreadPoolExecutor

    def ask(i):
        model = ("alpha", "beta", "tiny")[i % 3]
        if i % 2:
            stream = client.completions.create(
                model=model, prompt=PROMPT, max_tokens=12, temperature=0, stream=True
            )
            return model, "".join(c.choices[0].text for c in stream)
        return model, greedy(client, model)

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(ask, range(18)))
    assert [text for _, text in results] == [answers[model] for model, _ in results]


class Hammer:
    """Requests to the already-loaded adapters in a loop, recording each one's window."""

    def __init__(self, client, expected: dict[str, str]):
        self.client, self.expected = client, expected
        self.results: list[tuple[float, float, str, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for model, text in self.expected.items():
                start = time.time()
                try:
                    ok = greedy(self.client, model) == text
                except openai.APIError:
                    ok = False
                self.results.append((start, time.time(), model, ok))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=60)


def test_adding_an_adapter_hot_loads_it_while_the_others_keep_answering(
    client, server, s3, s3_base, published, answers
):
    pid = server.process.pid
    with Hammer(client, {"alpha": answers["alpha"], "beta": answers["beta"]}) as hammer:
        time.sleep(0.5)
        changed_at = time.time()
        server.write_config(config_for(s3, s3_base, published, [*INITIAL, "gamma"]))
        gamma = server.wait_for(
            lambda: (a := server.adapters().get("gamma")) and a["state"] == "Loaded" and a,
            "gamma Loaded",
        )
        time.sleep(0.3)
    assert server.process.pid == pid and server.process.poll() is None
    assert hammer.results and all(ok for *_, ok in hammer.results), hammer.results
    in_flight = [r for r in hammer.results if r[0] < gamma["loadedAt"] and r[1] > changed_at]
    assert in_flight, "no request overlapped the change and the load"
    assert {r[2] for r in hammer.results if r[1] > changed_at} == {"alpha", "beta"}
    third = greedy(client, "gamma")
    assert third not in (answers["alpha"], answers["beta"], answers["tiny"])
    assert "gamma" in {m.id for m in client.models.list()}
    assert server.get("/readyz")[0] == 200


def test_lru_bound_evicts_and_reloads_from_disk_with_the_same_answers(
    client, server, s3, s3_base, published, answers
):
    evictions = "kubetune_serve_adapter_evictions_total"
    before = metric(server, evictions)
    server.write_config(
        config_for(s3, s3_base, published, [*INITIAL, "gamma"], maxAdaptersInMemory=1)
    )
    server.wait_for(
        lambda: sum(a["inMemory"] for a in server.adapters().values()) == 1, "eviction to 1"
    )
    for _ in range(2):
        assert greedy(client, "alpha") == answers["alpha"]
        assert greedy(client, "beta") == answers["beta"]
        assert greedy(client, "tiny") == answers["tiny"]
    resident = [n for n, a in server.adapters().items() if a["inMemory"]]
    assert resident == ["beta"]
    assert metric(server, evictions) >= before + 4


def test_removing_an_adapter_unloads_it_and_leaves_the_rest(
    client, server, s3, s3_base, published, answers
):
    server.write_config(config_for(s3, s3_base, published, ["alpha", "gamma"]))
    server.wait_for(lambda: "beta" not in server.adapters(), "beta removed")
    with pytest.raises(openai.NotFoundError):
        greedy(client, "beta")
    assert greedy(client, "alpha") == answers["alpha"]
    assert sorted(m.id for m in client.models.list()) == ["alpha", "gamma", "tiny"]


def test_a_broken_config_edit_is_reported_and_the_last_good_one_keeps_serving(
    client, server, answers
):
    server.config_path.write_text("{broken")
    server.wait_for(lambda: server.get_json("/v1/adapters")[1]["configError"], "configError")
    assert greedy(client, "alpha") == answers["alpha"]
    request = urllib.request.Request(server.url + "/v1/completions", data=b"[1]", method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        urllib.request.urlopen(request, timeout=30)
        raise AssertionError("a non-object body was accepted")
    except urllib.error.HTTPError as error:
        assert error.code == 400 and json.loads(error.read())["error"]["code"] == "invalid_json"
