"""The agent process before vLLM answers (as in a pod, where the sidecar starts first):
probes, fetching ahead, a bad config edit, metrics, SIGTERM. No vLLM needed."""

import signal
import time

import pytest
from kubetune.devenv.s3 import free_port
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_fetches_ahead_while_vllm_starts_and_stops_on_sigterm(agents, stored_adapters):
    good1, good2, corrupt = (stored_adapters[n] for n in ("good1", "good2", "corrupt"))
    agent = agents([good1.entry(), good2.entry(pin=False), corrupt.entry(pin=False)],
                   f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert agent.get("/healthz")[0] == 200
    status, body = agent.get_json("/readyz")
    assert status == 503 and body["reason"] == "vLLM does not answer /health yet"

    def staged():
        adapters = agent.adapters()
        waiting = [n for n in ("good1", "good2")
                   if "waiting for vLLM" in (adapters[n]["message"] or "")]
        return adapters if len(waiting) == 2 and adapters["corrupt"]["state"] == "Failed" else None

    adapters = agent.wait_for(staged, "both good adapters staged, the corrupt one Failed")
    assert adapters["good1"]["state"] == adapters["good2"]["state"] == "Loading"
    assert adapters["good2"]["sha256"] == good2.sha256  # unpinned: read from its manifest
    assert "integrity check failed: adapter_model.safetensors: sha256" in adapters["corrupt"]["message"]
    on_disk = sorted(p.name for p in agent.adapter_dir.iterdir())
    assert on_disk == [f"good1-{good1.sha256[:16]}", f"good2-{good2.sha256[:16]}"]

    config = agent.config_path.read_text()
    agent.config_path.write_text(config.replace('"maxLoraRank": 16', '"maxLoraRank": "lots"'))
    body = agent.wait_for(lambda: agent.get_json("/v1/adapters")[1].get("configError") and
                          agent.get_json("/v1/adapters")[1], "the config error to be reported")
    assert "maxLoraRank" in body["configError"]
    assert [a["name"] for a in body["adapters"]] == ["good1", "good2", "corrupt"]

    metrics = samples(agent.get("/metrics")[1].decode())
    assert metrics[("kubetune_agent_vllm_up", ())] == 0
    assert metrics[("kubetune_agent_config_errors_total", ())] == 1
    assert metrics[("kubetune_agent_adapters", (("state", "Loading"),))] == 2
    assert metrics[("kubetune_agent_adapters", (("state", "Failed"),))] == 1
    assert metrics[("kubetune_agent_adapter_loads_total", (("result", "rejected"),))] == 1

    started = time.monotonic()
    agent.process.send_signal(signal.SIGTERM)
    assert agent.process.wait(timeout=5) == 0
    assert time.monotonic() - started < 2.0


def test_bad_config_at_start_exits_with_the_reason(agents, tmp_path):
    with pytest.raises(AssertionError, match="agent exited"):
        agents([{"name": "a", "uri": "not-s3"}], "http://127.0.0.1:1")
    reason = (tmp_path / "agent-0" / "termination-log").read_text()
    assert reason.startswith("agent cannot start: adapters[0].uri")
