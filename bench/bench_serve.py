"""Benchmark of serving: vLLM (what ModelServe runs) against kubetune's former engine,
measured side by side in one run on the same machine, model and adapters.

Prints:
  1. generated tokens/s with 16 concurrent requests over 8 adapters, vLLM vs the former
     engine (one request decoded at a time under a global lock): the ratio to beat is 1;
  2. vLLM with 16 concurrent requests on one adapter vs spread over 8 (mixed-adapter
     batches vs single-adapter batches), and one request alone;
  3. p50/p95 from an adapter-list change (the mounted ConfigMap file, written as the
     kubelet writes it) to `Loaded` in kubetune's adapter agent, which downloads from S3,
     verifies and loads through vLLM's runtime LoRA API;
  4. vLLM's start time (process start to /health) and its resident memory here;
  5. mixed batches of base and adapter requests on a CPU pool, with the spec's LoRA flags
     passed as they are (every slot taken) against the slots kubetune derives: tokens/s,
     the ratio, and how many answers differ from each model's answer alone.

The former engine is taken from git at FORMER_ENGINE_REV (the last commit that had it)
and run as its Deployment ran it. Everything is real: moto S3 on loopback, the tiny
Llama base (float32 in both servers), peft adapters, the official openai client.
Run: .venv/bin/python bench/bench_serve.py [--loads 20] [--tokens 32] [--mixed-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORMER_ENGINE_REV = "aa499fe068ccacf7180b3f6d0ec978215a1a754e"
BUCKET = "bench"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
PROMPT = "Add the numbers. 3 and 4"
ADAPTERS = 8


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def make_adapters(base_dir: Path, out: Path, base_uri: str, count: int) -> list[Path]:
    import torch
    from kubetune.workers.manifest import MANIFEST_NAME, Manifest, describe_files
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    made = []
    for i in range(count):
        torch.manual_seed(100 + i)
        model = AutoModelForCausalLM.from_pretrained(base_dir)
        lora = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False)
        directory = out / f"a{i}"
        get_peft_model(model, lora).save_pretrained(directory, safe_serialization=True)
        manifest = Manifest(kind="adapter", files=describe_files(directory),
                            base_model={"uri": base_uri}, method={"type": "lora", "rank": 8})
        (directory / MANIFEST_NAME).write_bytes(manifest.to_json())
        made.append(directory)
    return made


def upload(client, directory: Path, prefix: str) -> str:
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(directory).as_posix()}")
    return f"s3://{BUCKET}/{prefix}"


def get_json(url: str, timeout: float = 10):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, None
    except (OSError, ValueError):
        return None, None


def wait(predicate, what: str, process: subprocess.Popen, timeout: float = 600) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise SystemExit(f"{what}: the process exited ({process.returncode})")
        if predicate():
            return time.monotonic() - started
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and its descendants (vLLM runs an engine process)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def concurrent_tokens(base_url: str, models: list[str], requests: int, tokens: int) -> float:
    """Generated tokens/s with `requests` in flight at once, models assigned in turn."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=600)
    counts = [0] * requests

    def one(i: int) -> None:
        answer = client.completions.create(model=models[i % len(models)], prompt=PROMPT,
                                           max_tokens=tokens, temperature=0)
        counts[i] = answer.usage.completion_tokens

    threads = [threading.Thread(target=one, args=(i,)) for i in range(requests)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def former_engine(workdir: Path, env: dict, config: dict, port: int) -> subprocess.Popen:
    """kubetune's former server, from git, started as its Deployment started it."""
    tree = workdir / "former"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", FORMER_ENGINE_REV, "workers"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    (workdir / "former.json").write_text(json.dumps(config))
    env = {**env, "PYTHONPATH": os.pathsep.join([str(tree / "workers"), str(REPO / "operator")])}
    with open(workdir / "former.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "kubetune.workers.serve", "--config", str(workdir / "former.json"),
             "--host", "127.0.0.1", "--port", str(port), "--cache-dir", str(workdir / "cache")],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)


def vllm_server(workdir: Path, base_dir: Path, port: int, env: dict, max_loras: int = ADAPTERS,
                max_cpu_loras: int = 2 * ADAPTERS, log_name: str = "vllm.log") -> subprocess.Popen:
    from kubetune.devenv.vllmenv import VENV

    with open(workdir / log_name, "wb") as log:
        return subprocess.Popen(
            [str(VENV / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
             "--model", str(base_dir), "--served-model-name", "tiny", "--host", "127.0.0.1",
             "--port", str(port), "--enable-lora", "--max-loras", str(max_loras),
             "--max-lora-rank", "16", "--max-cpu-loras", str(max_cpu_loras),
             "--max-model-len", "512", "--dtype", "float32"],
            stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
            env={**env, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": "1"})


class Agent:
    """kubetune's adapter agent beside that vLLM, its config written as the kubelet does."""

    def __init__(self, workdir: Path, base_dir: Path, vllm_port: int, env: dict, config: dict,
                 name: str = "agent"):
        from kubetune.devenv.s3 import free_port

        workdir = workdir / name
        workdir.mkdir()
        self.config_path = workdir / "agent" / "config.json"
        self.config_path.parent.mkdir()
        self.config = config
        self.write()
        self.port = free_port()
        with open(workdir / "agent.log", "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kubetune.workers.agent", "run",
                 "--config", str(self.config_path), "--base-dir", str(base_dir),
                 "--adapter-dir", str(workdir / "adapters"),
                 "--vllm-url", f"http://127.0.0.1:{vllm_port}", "--host", "127.0.0.1",
                 "--port", str(self.port), "--poll-seconds", "0.2"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)

    def write(self) -> None:
        staging = self.config_path.with_suffix(".tmp")
        staging.write_text(json.dumps(self.config))
        os.replace(staging, self.config_path)

    def states(self) -> dict[str, str]:
        status, body = get_json(f"http://127.0.0.1:{self.port}/v1/adapters")
        return {a["name"]: a["state"] for a in (body or {}).get("adapters", [])} if status == 200 else {}


def greedy_tokens(client, model: str, tokens: int) -> tuple[int, ...]:
    answer = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=tokens, temperature=0,
        extra_body={"return_token_ids": True, "min_tokens": tokens})
    return tuple(answer.choices[0].token_ids)


def timed_mix(client, models: list[str], tokens: int) -> tuple[float, list[tuple[int, ...]]]:
    """16 requests at once, models in turn: generated tokens/s and each answer's tokens."""
    answers: list = [None] * 16

    def one(i: int) -> None:
        answers[i] = greedy_tokens(client, models[i % len(models)], tokens)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(answers))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(map(len, answers)) / (time.perf_counter() - started), answers


def mixed_batches(workdir: Path, base_dir: Path, env: dict, agent_config: dict, names: list[str],
                  tokens: int, rounds: int) -> dict[str, tuple[float, int, int]]:
    """Part 5: 16 concurrent requests over the base and every adapter, with the spec's
    own --max-loras/--max-cpu-loras ("spec flags": every slot taken, as before kubetune
    derived them) and with the flags kubetune derives for a CPU pool (one slot kept
    empty, the agent capped). Both servers run at once and the rounds alternate between
    them, so load from elsewhere on the machine falls on both alike. Per setting:
    generated tokens/s, and how many answers differ from that model's answer alone."""
    from contextlib import ExitStack

    from kubetune.api import ModelServeSpec
    from kubetune.devenv.s3 import free_port
    from kubetune.operator.modelserve.lora_slots import lora_slots
    from openai import OpenAI

    spec = ModelServeSpec.model_validate({
        "baseModel": {"uri": agent_config["baseModel"]["uri"]},
        "resources": {"gpusPerWorker": 0}, "maxAdaptersInMemory": len(names),
        "vllm": {"maxLoras": len(names)}})
    derived = lora_slots(spec)
    settings = {
        ("spec", "spec flags"): (spec.vllm.max_loras, spec.max_adapters_in_memory, None),
        ("derived", "kubetune's"): (derived.max_loras, derived.max_cpu_loras, derived.max_loaded),
    }
    models = ["tiny", *names]
    with ExitStack() as running:
        servers = {}
        for (slug, label), (max_loras, max_cpu_loras, max_loaded) in settings.items():
            port = free_port()
            vllm = vllm_server(workdir, base_dir, port, env, max_loras, max_cpu_loras,
                               log_name=f"vllm-{slug}.log")
            running.callback(stop, vllm)
            wait(lambda: get_json(f"http://127.0.0.1:{port}/health")[0] == 200, "vLLM /health", vllm)
            config = dict(agent_config)
            if max_loaded is not None:
                config["maxLoadedAdapters"] = max_loaded
            agent = Agent(workdir, base_dir, port, env, config, name=f"agent-{slug}")
            running.callback(stop, agent.process)
            wait(lambda: list(agent.states().values()).count("Loaded") == len(names),
                 f"the agent loading {len(names)} adapters", agent.process)
            client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0,
                            timeout=600)
            solo = {m: greedy_tokens(client, m, tokens) for m in models}
            timed_mix(client, models, 4)  # warm up
            key = f"{label} (--max-loras {max_loras}, --max-cpu-loras {max_cpu_loras})"
            servers[key] = (client, solo, [], [0, 0])
        for round_ in range(rounds):
            order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
            for key in order:
                client, solo, rates, counts = servers[key]
                rate, answers = timed_mix(client, models, tokens)
                asked = [models[i % len(models)] for i in range(len(answers))]
                rates.append(rate)
                counts[0] += sum(a != solo[m] for m, a in zip(asked, answers))
                counts[1] += len(answers)
    return {key: (sum(rates) / len(rates), counts[0], counts[1])
            for key, (_, _, rates, counts) in servers.items()}


def print_mixed(results: dict[str, tuple[float, int, int]], adapters: int, tokens: int) -> None:
    print(f"\n5. 16 concurrent requests over the base and {adapters} adapters, CPU pool, "
          f"max_tokens {tokens} (generated tokens/s; answers unlike the model's solo answer)")
    for label, (rate, wrong, total) in results.items():
        print(f"   {label:58s} {rate:8.1f}   wrong {wrong}/{total}")
    (before, _, _), (after, _, _) = results.values()
    print(f"   ratio kubetune's/spec flags = {after / before:.2f}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", type=int, default=20, help="hot loads timed in part 3")
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens per request")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of part 5")
    parser.add_argument("--mixed-only", action="store_true", help="run part 5 only")
    args = parser.parse_args()

    from kubetune.devenv.s3 import LoopbackS3, free_port
    from kubetune.devenv.tinymodel import tiny_model_dir

    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    base_dir = tiny_model_dir()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    with LoopbackS3() as s3:
        client = s3.client()
        client.create_bucket(Bucket=BUCKET)
        base_uri = upload(client, base_dir, "models/tiny")
        print(f"building {ADAPTERS} rank-8 adapters in {workdir} ...", flush=True)
        local = make_adapters(base_dir, workdir / "made", base_uri, ADAPTERS)
        uris = [upload(client, d, f"adapters/{d.name}") for d in local]
        names = [d.name for d in local]
        env = {**env, **s3.env()}
        entries = [{"name": n, "uri": u} for n, u in zip(names, uris)]
        agent_config = {"baseModel": {"uri": base_uri, "servedName": "tiny"}, "adapters": entries,
                        "maxLoraRank": 16, "storage": {"endpoint": s3.endpoint}}
        mixed = mixed_batches(workdir, base_dir, env, agent_config, names, args.tokens, args.rounds)
        if args.mixed_only:
            print_mixed(mixed, ADAPTERS, args.tokens)
            return

        port = free_port()
        former = former_engine(workdir, env, {
            "baseModel": {"uri": base_uri, "servedName": "tiny"}, "adapters": entries,
            "maxAdaptersInMemory": ADAPTERS, "storage": {"endpoint": s3.endpoint}}, port)
        try:
            def former_ready() -> bool:
                status, body = get_json(f"http://127.0.0.1:{port}/v1/adapters")
                return status == 200 and all(
                    a["state"] == "Loaded" for a in body["adapters"]) and len(body["adapters"]) == ADAPTERS
            wait(former_ready, "the former engine with its adapters", former)
            url = f"http://127.0.0.1:{port}/v1"
            concurrent_tokens(url, names, 2, 4)  # warm up
            former_mixed = concurrent_tokens(url, names, 16, args.tokens)
        finally:
            stop(former)

        vport = free_port()
        vllm = vllm_server(workdir, base_dir, vport, env)
        try:
            start_seconds = wait(lambda: get_json(f"http://127.0.0.1:{vport}/health")[0] == 200,
                                 "vLLM /health", vllm)
            rss = tree_rss_mib(vllm.pid)
            agent = Agent(workdir, base_dir, vport, env, agent_config)
            try:
                wait(lambda: list(agent.states().values()).count("Loaded") == ADAPTERS,
                     "the agent loading 8 adapters into vLLM", agent.process)
                url = f"http://127.0.0.1:{vport}/v1"
                concurrent_tokens(url, names, 2, 4)  # warm up
                vllm_mixed = concurrent_tokens(url, names, 16, args.tokens)
                vllm_single = concurrent_tokens(url, names[:1], 16, args.tokens)
                vllm_alone = concurrent_tokens(url, names[:1], 1, args.tokens)
                loads = []
                for i in range(args.loads):
                    entry = entries[i % ADAPTERS]
                    agent.config["adapters"] = [e for e in entries if e is not entry]
                    agent.write()
                    wait(lambda: entry["name"] not in agent.states(), "an unload", agent.process)
                    agent.config["adapters"] = entries
                    changed = time.monotonic()
                    agent.write()
                    wait(lambda: agent.states().get(entry["name"]) == "Loaded", "a hot load",
                         agent.process)
                    loads.append(time.monotonic() - changed)
            finally:
                stop(agent.process)
        finally:
            stop(vllm)

    print(f"\n1. 16 concurrent requests over {ADAPTERS} adapters, max_tokens {args.tokens} (generated tokens/s)")
    print(f"   former engine   {former_mixed:8.1f}")
    print(f"   vLLM            {vllm_mixed:8.1f}   ratio vLLM/former = {vllm_mixed / former_mixed:.1f}x")
    print("\n2. vLLM batches")
    print(f"   16 on 1 adapter {vllm_single:8.1f}")
    print(f"   16 on {ADAPTERS} adapters{vllm_mixed:8.1f}   ratio mixed/single = {vllm_mixed / vllm_single:.2f}")
    print(f"   1 request alone {vllm_alone:8.1f}   ratio 16 mixed/1 alone = {vllm_mixed / vllm_alone:.1f}x")
    print(f"\n3. adapter-list change to Loaded (agent: S3 download + verify + vLLM load), n={len(loads)}")
    print(f"   p50 {percentile(loads, 50) * 1e3:7.0f} ms   p95 {percentile(loads, 95) * 1e3:7.0f} ms")
    print(f"\n4. vLLM start to /health {start_seconds:.1f} s, resident memory {rss:.0f} MiB "
          "(process tree, KV cache 1 GiB)")
    print_mixed(mixed, ADAPTERS, args.tokens)


if __name__ == "__main__":
    main()
