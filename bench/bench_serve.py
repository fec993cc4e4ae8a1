"""Benchmark of the adapter server, measured side by side in one run.

Prints:
  1. adapter cold load from S3 (download + verify + inject, as timed by the server) p50/p95
     for three LoRA ranks, i.e. three adapter sizes;
  2. switch cost between loaded adapters (in-process: one decoding step on the same adapter
     every time vs alternating between two);
  3. throughput of one server answering 1 adapter vs 20 adapters requested in turn (all
     resident), and 20 in turn with maxAdaptersInMemory=8 (LRU reloads from disk), as ratios.

Everything is real: a moto S3 server on loopback, the tiny Llama base, peft adapters, the
server process started as the Deployment starts it, the official openai client.
Run: .venv/bin/python bench/bench_serve.py [--requests 60]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BUCKET = "bench"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT = "Reverse the word."


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def make_adapters(base_dir: Path, out: Path, rank: int, count: int, first_seed: int, base_uri: str):
    """`count` distinct LoRA adapters of one rank, written as the trainer writes them."""
    import torch
    from kubetune.workers.manifest import MANIFEST_NAME, Manifest, describe_files
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    made = []
    for i in range(count):
        torch.manual_seed(first_seed + i)
        model = AutoModelForCausalLM.from_pretrained(base_dir)
        lora = LoraConfig(
            r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False
        )
        directory = out / f"r{rank}-{i}"
        get_peft_model(model, lora).save_pretrained(directory, safe_serialization=True)
        manifest = Manifest(
            kind="adapter",
            files=describe_files(directory),
            base_model={"uri": base_uri},
            method={"type": "lora", "rank": rank, "alpha": 2 * rank, "targetModules": TARGETS},
        )
        (directory / MANIFEST_NAME).write_bytes(manifest.to_json())
        made.append(directory)
    return made


def upload(client, directory: Path, prefix: str) -> str:
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(directory).as_posix()}")
    return f"s3://{BUCKET}/{prefix}"


class Server:
    def __init__(self, workdir: Path, env: dict, config: dict):
        from kubetune.devenv.s3 import free_port

        self.config_path = workdir / "config.json"
        self.write(config)
        self.port = free_port()
        with open(workdir / "server.log", "wb") as log:  # the child keeps its own handle
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kubetune.workers.serve",
                    "--config",
                    str(self.config_path),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--cache-dir",
                    str(workdir / "cache"),
                    "--threads",
                    "1",
                    "--poll-seconds",
                    "0.5",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def write(self, config: dict) -> None:
        staging = self.config_path.with_suffix(".tmp")
        staging.write_text(json.dumps(config))
        os.replace(staging, self.config_path)

    def get(self, path: str):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as error:
            return error.code, None
        except OSError:
            return None, None

    def wait(self, predicate, timeout=600.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit("server exited; see server.log")
            if predicate():
                return
            time.sleep(0.2)
        raise SystemExit("timed out")

    def adapters(self) -> dict:
        return {a["name"]: a for a in self.get("/v1/adapters")[1]["adapters"]}

    def all_settled(self, names) -> bool:
        status, body = self.get("/v1/adapters")
        if status != 200:
            return False
        states = {a["name"]: a["state"] for a in body["adapters"]}
        return all(states.get(n) in ("Loaded", "Failed") for n in names)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def throughput(client, models: list[str], requests: int) -> tuple[float, float]:
    """Completion tokens/s and requests/s, sequential, models taken in turn."""
    tokens = 0
    started = time.perf_counter()
    for i in range(requests):
        result = client.completions.create(
            model=models[i % len(models)], prompt=PROMPT, max_tokens=16, temperature=0
        )
        tokens += result.usage.completion_tokens
    elapsed = time.perf_counter() - started
    return tokens / elapsed, requests / elapsed


def switch_cost(base_dir: Path, adapters: list[Path], base_uri: str, steps: int) -> dict:
    """In-process: the switch itself (this server's flag flip vs peft's set_adapter), and
    a one-token forward on the same adapter vs alternating two (medians of 5 interleaved
    trials, since other processes share the CPU)."""
    import torch
    from kubetune.workers.serve.basemodel import ModelLocation
    from kubetune.workers.serve.config import BaseModelConfig
    from kubetune.workers.serve.engine import ModelHost

    torch.set_num_threads(1)
    host = ModelHost.load(BaseModelConfig(uri=base_uri), ModelLocation(str(base_dir)))
    a, b = (host.add_adapter(p) for p in adapters[:2])
    ids = torch.tensor([host.encode_prompt(PROMPT)])

    def per_call(action, sequence):
        started = time.perf_counter()
        for name in sequence:
            action(name)
        return (time.perf_counter() - started) / len(sequence)

    def forward(name):
        with torch.inference_mode():
            host._forward_locked(name, ids, None)

    trials = {"same": [], "alternating": [], "adapter_base": [], "flip": [], "peft": []}
    for _ in range(5):
        trials["same"].append(per_call(forward, [a] * steps))
        trials["alternating"].append(per_call(forward, [a, b] * (steps // 2)))
        trials["adapter_base"].append(per_call(forward, [a, None] * (steps // 2)))
        trials["flip"].append(per_call(host._activate_locked, [a, b] * (steps // 2)))
        host._active = object()
        trials["peft"].append(per_call(host._peft.set_adapter, [a, b] * (steps // 2)))
        host._active = object()
    return {key: statistics.median(values) for key, values in trials.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=60, help="requests per throughput case")
    parser.add_argument("--per-rank", type=int, default=8, help="cold loads per rank")
    args = parser.parse_args()

    import openai
    from kubetune.devenv.s3 import LoopbackS3
    from kubetune.devenv.tinymodel import tiny_model_dir

    ranks = (8, 64, 256)
    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    base_dir = tiny_model_dir()
    with LoopbackS3() as s3:
        client = s3.client()
        client.create_bucket(Bucket=BUCKET)
        base_uri = upload(client, base_dir, "models/tiny")
        print(f"building adapters in {workdir} ...", flush=True)
        uris: dict[int, list[str]] = {}
        local: dict[int, list[Path]] = {}
        for rank in ranks:
            count = max(args.per_rank, 21) if rank == 8 else args.per_rank
            local[rank] = make_adapters(
                base_dir, workdir / "adapters", rank, count, rank * 1000, base_uri
            )
            uris[rank] = [upload(client, d, f"adapters/{d.name}") for d in local[rank]]
        size = {r: sum(p.stat().st_size for p in local[r][0].iterdir()) for r in ranks}

        def entry(rank, i):
            return {"name": f"r{rank}-{i}", "uri": uris[rank][i]}

        warmup = entry(8, 20)  # the first load pays peft's one-off wrapping: not counted
        config = {
            "baseModel": {"uri": base_uri, "servedName": "tiny"},
            "adapters": [warmup],
            "maxAdaptersInMemory": 64,
            "storage": {"endpoint": s3.endpoint},
        }
        env = {**os.environ, **s3.env(), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        server = Server(workdir, env, config)
        try:
            server.wait(lambda: server.get("/readyz")[0] == 200)
            cold = {r: [entry(r, i) for i in range(args.per_rank)] for r in ranks}
            names = [e["name"] for r in ranks for e in cold[r]]
            config["adapters"] = [warmup] + [e for r in ranks for e in cold[r]]
            server.write(config)
            server.wait(lambda: server.all_settled(names))
            views = server.adapters()
            print("\n1. adapter cold load from S3 (download + sha256 verify + peft inject)")
            print(f"   {'rank':>5} {'size':>10} {'p50':>9} {'p95':>9}  n")
            for r in ranks:
                seconds = [views[e["name"]]["loadSeconds"] for e in cold[r]]
                print(
                    f"   {r:>5} {size[r] / 1e6:>8.2f}MB {percentile(seconds, 50) * 1e3:>7.1f}ms "
                    f"{percentile(seconds, 95) * 1e3:>7.1f}ms  {len(seconds)}"
                )

            twenty = [entry(8, i) for i in range(20)]
            config["adapters"] = [warmup] + twenty
            server.write(config)
            server.wait(lambda: server.all_settled([e["name"] for e in twenty]))
            api = openai.OpenAI(
                base_url=f"http://127.0.0.1:{server.port}/v1", api_key="x", max_retries=0
            )
            throughput(api, ["r8-0"], 5)  # warm the connection and the code paths
            one_tps, one_rps = throughput(api, ["r8-0"], args.requests)
            many_tps, many_rps = throughput(api, [e["name"] for e in twenty], args.requests)
            config["maxAdaptersInMemory"] = 8
            server.write(config)
            server.wait(lambda: sum(a["inMemory"] for a in server.adapters().values()) <= 8)
            lru_tps, lru_rps = throughput(api, [e["name"] for e in twenty], args.requests)
        finally:
            server.stop()

    try:
        cost = switch_cost(base_dir, local[8], base_uri, 200)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n2. switch cost between loaded adapters (in-process, rank 8, medians of 5 trials)")
    print(f"   switch (server's flag flip)   {cost['flip'] * 1e3:7.3f} ms")
    print(f"   switch (peft set_adapter)     {cost['peft'] * 1e3:7.3f} ms")
    print(f"   forward, same adapter         {cost['same'] * 1e3:7.3f} ms/step")
    print(
        f"   forward, alternating two      {cost['alternating'] * 1e3:7.3f} ms/step "
        f"(ratio {cost['alternating'] / cost['same']:.2f})"
    )
    print(f"   forward, adapter/base in turn {cost['adapter_base'] * 1e3:7.3f} ms/step")
    print(f"\n3. throughput, one server, {args.requests} sequential requests of 16 tokens")
    print(f"   1 adapter                    {one_tps:7.1f} tok/s {one_rps:6.2f} req/s")
    print(
        f"   20 adapters in turn          {many_tps:7.1f} tok/s {many_rps:6.2f} req/s  "
        f"ratio 20/1 = {many_tps / one_tps:.2f}"
    )
    print(
        f"   20 in turn, 8 in memory (LRU){lru_tps:7.1f} tok/s {lru_rps:6.2f} req/s  "
        f"ratio = {lru_tps / one_tps:.2f}"
    )


if __name__ == "__main__":
    main()
