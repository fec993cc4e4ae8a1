"""The README's main job: kubetune's whole loop on one machine, everything on loopback.

    make demo            (or: python -m kubetune.devenv.demo)

Starts the real control plane (etcd, kube-apiserver, controller manager, scheduler), S3
(moto server) and a node agent with one spot and one on-demand node, then installs
kubetune with `helm install` of its chart (CRDs, RBAC, the operator's Deployment, whose
pod the node agent runs under the chart's ServiceAccount). Applies
examples/finetune.yaml adapted to the tiny local model and data with the real kubectl,
shows progress as the trainer reports it, injects one spot preemption and shows the
recovery. The trainer evaluates the adapter on 100 held-out rows before, during and after
training, and the job's gate (exact match at least 90 %) decides whether it is promoted. The ModelServe for the job's adapter is applied beside it: vLLM (its CPU
build, from the vLLM virtualenv the node agent maps vLLM's image to) starts on the base
while the job trains, and when the job succeeds kubetune's adapter agent verifies the
adapter and hot-loads it into that same vLLM process. A chat completion through the
official `openai` client shows the answer. Ends with a summary and leaves no process
behind.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from . import digittasks, spot
from .kubeapi import FINETUNEJOBS, MODELSERVES, PODS
from .stack import REPO, EmbeddedStack
from .tinymodel import tiny_model_dir

NAMESPACE = "demo"
JOB = "support-bot-v1"
SERVE = "support-bots"


def say(message: str) -> None:
    print(f"[kubetune demo] {message}", flush=True)


def demo_finetunejob(model_dir: Path, max_steps: int) -> dict:
    """examples/finetune.yaml with what cannot exist here swapped for local stand-ins."""
    body = yaml.safe_load((REPO / "examples" / "finetune.yaml").read_text())
    body["metadata"] = {"name": JOB, "namespace": NAMESPACE}
    spec = body["spec"]
    spec["baseModel"] = {"uri": f"file://{model_dir}"}
    spec["dataset"] = {"uri": f"file://{digittasks.DATASET}", "format": "alpaca", "evalFraction": 0.1}
    spec["method"]["quantization"]["computeDtype"] = "float32"
    spec["training"] = {"maxSteps": max_steps, "learningRate": 0.003, "scheduler": "constant",
                        "batchSize": 8, "maxSeqLength": 64, "seed": 42}
    spec["resources"] = {"workers": 1, "gpusPerWorker": 0, "cpu": "2", "memory": "4Gi"}
    spec["spot"].update({"checkpointIntervalSteps": 10, "backoff": {"initialSeconds": 1, "maxSeconds": 5}})
    # The trainer's own evaluation on the rows vLLM is asked below, and the gate the
    # adapter must pass before the ModelServe's fineTuneJobRef serves it.
    spec["evaluation"] = {"dataset": {"uri": f"file://{digittasks.EVAL_DATASET}"},
                          "metrics": ["loss", "exactMatch"], "maxExamples": 100, "maxNewTokens": 12,
                          "when": {"baseline": True, "everySteps": 20, "end": True},
                          "gate": {"metric": "exactMatch", "threshold": 0.9}}
    spec["output"] = {"uri": "s3://kubetune/adapters", "credentials": {"secretRef": {"name": "s3-credentials"}}}
    return body


def demo_modelserve(model_dir: Path) -> dict:
    body = yaml.safe_load((REPO / "examples" / "modelserve.yaml").read_text())
    body["metadata"] = {"name": SERVE, "namespace": NAMESPACE}
    spec = body["spec"]
    spec["baseModel"] = {"uri": f"file://{model_dir}", "servedName": "tiny-llama"}
    spec["adapters"] = [{"name": JOB, "fineTuneJobRef": {"name": JOB}}]
    spec["replicas"] = 1
    spec["maxAdaptersInMemory"] = 4
    # float32 so vLLM's greedy answer is the one transformers+peft give (see tests/agent).
    spec["vllm"] = {"maxLoras": 2, "maxLoraRank": 16, "maxModelLen": 512, "dtype": "float32",
                    "cpuKVCacheGiB": 1}
    spec["resources"] = {"gpusPerWorker": 0, "cpu": "2", "memory": "6Gi"}
    spec["storage"] = {"credentials": {"secretRef": {"name": "s3-credentials"}}}
    return body


def show_changes(stack: EmbeddedStack, kind: str, last: list[str] | None) -> list[str]:
    """Print `kubectl get <kind>` whenever a column other than AGE changes."""
    lines = stack.kubectl("get", kind, "-n", NAMESPACE).splitlines()
    columns = [" ".join(line.split()[:-1]) for line in lines]
    if columns != last:
        for line in (lines[1:] if last else lines):
            say(f"kubectl get {kind}: {' '.join(line.split())}")
    return columns


def job_status(stack: EmbeddedStack) -> dict:
    return (stack.api.get(FINETUNEJOBS, JOB, NAMESPACE) or {}).get("status") or {}


def head_pod(stack: EmbeddedStack) -> dict | None:
    pods = stack.api.list(PODS, NAMESPACE, label_selector=f"kubetune.dev/finetunejob={JOB}")
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    heads = [p for p in running if p["metadata"]["labels"].get("app.kubernetes.io/component") == "ray-head"]
    return heads[0] if heads else None


def follow_training(stack: EmbeddedStack, preempt_at: int, timeout: float) -> dict:
    """Print a line whenever `kubectl get ftj` changes; preempt once at step >= preempt_at."""
    deadline = time.monotonic() + timeout
    last_columns, preempted = None, False
    while time.monotonic() < deadline:
        last_columns = show_changes(stack, "ftj", last_columns)
        status = job_status(stack)
        step = ((status.get("progress") or {}).get("step")) or 0
        pod = head_pod(stack)
        if not preempted and pod and step >= preempt_at:
            say(f"injecting a spot preemption: an Eviction of pod {pod['metadata']['name']} at step "
                f"{step}, as a node-termination handler sends on the spot notice")
            spot.evict(stack.api, NAMESPACE, pod["metadata"]["name"])
            preempted = True
        if status.get("phase") in ("Succeeded", "NotPromoted", "Failed"):
            return status
        time.sleep(1.0)
    raise TimeoutError(f"FineTuneJob did not finish in {timeout:.0f}s; operator log:\n{stack.operator_log()[-3000:]}")


def serve_status(stack: EmbeddedStack) -> dict:
    return (stack.api.get(MODELSERVES, SERVE, NAMESPACE) or {}).get("status") or {}


def wait_serve(stack: EmbeddedStack, adapter_state: str | None, timeout: float) -> dict:
    """Until the ModelServe is Ready (and the job's adapter in `adapter_state`, if given)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = show_changes(stack, "ms", last)
        status = serve_status(stack)
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
        states = {a["name"]: a.get("state") for a in status.get("adapters", [])}
        if ready and (adapter_state is None or states.get(JOB) == adapter_state):
            return status
        time.sleep(1.0)
    raise TimeoutError(f"ModelServe not Ready in {timeout:.0f}s; status {json.dumps(serve_status(stack))}\n"
                       f"operator log:\n{stack.operator_log()[-3000:]}")


def serve_pod(stack: EmbeddedStack) -> dict:
    pods = stack.api.list(PODS, NAMESPACE, label_selector=f"kubetune.dev/modelserve={SERVE}")
    return next(p for p in pods if (p.get("status") or {}).get("phase") == "Running"
                and not p["metadata"].get("deletionTimestamp"))


def restarts(pod: dict) -> int:
    statuses = (pod["status"].get("containerStatuses") or []) + (pod["status"].get("initContainerStatuses") or [])
    return sum(int(c.get("restartCount") or 0) for c in statuses)


def served(stack: EmbeddedStack) -> tuple[str, str]:
    """(base URL of the serve pod's OpenAI API, vLLM's version)."""
    import urllib.request

    ip = serve_pod(stack)["status"]["podIP"]
    port = demo_modelserve(Path("/")).get("spec", {}).get("port", 8000)
    with urllib.request.urlopen(f"http://{ip}:{port}/version", timeout=10) as answer:
        version = json.loads(answer.read()).get("version", "?")
    return f"http://{ip}:{port}/v1", version


def client_for(base_url: str):
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)


def answer(client, model: str, row: dict) -> str:
    """The greedy completion of the row's alpaca prompt (the format the job trained on)."""
    from kubetune.workers.train.data import ALPACA_PROMPT_WITH_INPUT

    completion = client.completions.create(model=model, prompt=ALPACA_PROMPT_WITH_INPUT.format(**row),
                                           max_tokens=12, temperature=0)
    return completion.choices[0].text.strip()


def exact_match(client, model: str, rows: list[dict]) -> float:
    """Share of held-out rows answered exactly; all in flight at once, as vLLM batches them."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=16) as pool:
        return sum(pool.map(lambda row: answer(client, model, row) == row["output"], rows)) / len(rows)


def run(max_steps: int, timeout: float) -> int:
    started = time.monotonic()
    say("building the tiny Llama model and tokenizer (cached after the first run)")
    model_dir = tiny_model_dir()
    with EmbeddedStack(namespace=NAMESPACE, bucket="kubetune") as stack:
        cp = stack.cluster.control_plane
        say(f"control plane up in {cp.started_seconds:.1f} s: API server {cp.url}, S3 {stack.s3.endpoint}, "
            f"nodes: {', '.join(n.name for n in stack.nodes)}; workdir {stack.workdir}")
        for line in stack.kubectl("version").strip().splitlines():
            say(f"kubectl version: {line}")
        say("helm install kubetune ./helm/kubetune -n kubetune-system --wait -> "
            + " ".join(stack.install_operator().split()[:12]) + " ...")
        operator = stack.operator_pod()
        say(f"operator pod {operator['metadata']['name']} Running on {operator['spec']['nodeName']} "
            f"as ServiceAccount {operator['spec']['serviceAccountName']} "
            f"(installed and Ready in {stack.operator_install_seconds:.1f} s)")
        manifest = stack.workdir / "finetune.yaml"
        manifest.write_text(yaml.safe_dump(demo_finetunejob(model_dir, max_steps), sort_keys=False))
        say("kubectl apply -f finetune.yaml -> " + stack.kubectl("apply", "-f", str(manifest)).strip())
        serve_manifest = stack.workdir / "modelserve.yaml"
        serve_manifest.write_text(yaml.safe_dump(demo_modelserve(model_dir), sort_keys=False))
        say("kubectl apply -f modelserve.yaml -> " + stack.kubectl("apply", "-f", str(serve_manifest)).strip()
            + " (vLLM starts on the base while the job trains; the adapter waits for the job)")
        status = follow_training(stack, preempt_at=max_steps // 3, timeout=timeout)
        evaluation = status.get("evaluation") or {}
        trained_base = (evaluation.get("baseline") or {}).get("exactMatch")
        trained_final = (evaluation.get("final") or {}).get("exactMatch")
        if evaluation:
            say(f"the trainer's evaluation on {(evaluation.get('final') or {}).get('examples')} held-out rows: "
                f"exact match before training {trained_base:.0%}, after {trained_final:.0%}; "
                f"gate: {(evaluation.get('gate') or {}).get('message')}")
        if status.get("phase") != "Succeeded":
            say(f"FineTuneJob ended {status.get('phase')}: {status.get('message')}")
            return 1
        succeeded_at = datetime.now(timezone.utc)
        serving = wait_serve(stack, "Loaded", timeout=300)
        pod = serve_pod(stack)
        pod_started = datetime.fromisoformat(pod["status"]["startTime"].replace("Z", "+00:00"))
        same_pod = pod_started < succeeded_at and restarts(pod) == 0
        say(f"adapter {JOB!r} hot-loaded into vLLM in pod {pod['metadata']['name']}, started "
            f"{(succeeded_at - pod_started).total_seconds():.0f} s before the job succeeded, "
            f"{restarts(pod)} container restarts; kubectl get ms: {serving.get('adaptersDisplay')} adapters loaded")
        base_url, version = served(stack)
        client, rows = client_for(base_url), digittasks.held_out_rows(100)
        base_name = demo_modelserve(Path("/"))["spec"]["baseModel"]["servedName"]
        start = time.monotonic()
        base_score = exact_match(client, base_name, rows)
        adapter_score = exact_match(client, JOB, rows)
        latency = (time.monotonic() - start) / (2 * len(rows))
        say(f"exact match on {len(rows)} held-out inputs of {digittasks.TASK_INSTRUCTION!r} through vLLM "
            f"{version}: base {base_score:.0%}, adapter {JOB!r} {adapter_score:.0%}")
        example = rows[0]
        got = answer(client, JOB, example)
        say(f"completion from adapter {JOB!r}: {example['input']!r} -> {got!r} "
            f"({'right' if got == example['output'] else 'wrong, the answer is ' + repr(example['output'])})")
        progress = status.get("progress") or {}
        adapter = status.get("adapter") or {}
        summary = {
            "steps": progress.get("step"), "trainLoss": progress.get("loss"), "evalLoss": progress.get("evalLoss"),
            "recoveries": status.get("recoveries"), "errorRetries": status.get("errorRetries"),
            "lostSteps": status.get("lostSteps"), "adapterUri": adapter.get("uri"), "adapterSha256": adapter.get("sha256"),
            "servedBy": f"vLLM {version}", "hotLoadedWithoutRestart": same_pod,
            "exactMatchBase": base_score, "exactMatchAdapter": adapter_score,
            "trainerExactMatchBaseline": trained_base, "trainerExactMatchFinal": trained_final,
            "promoted": next((c["status"] == "True" for c in status.get("conditions", [])
                              if c["type"] == "Promoted"), None),
            "gate": (evaluation.get("gate") or {}).get("message"),
            "servingLatencyMs": round(latency * 1000), "wallSeconds": round(time.monotonic() - started),
        }
        say("summary:\n" + json.dumps(summary, indent=2))
    say("stopped the pods (the operator's included), node agent, control plane and S3")
    return 0


def _interrupt(signum, frame):
    """SIGTERM unwinds like Ctrl-C, so every process the demo started is stopped."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=60, help="optimizer steps of the demo job")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for training")
    args = parser.parse_args(argv)
    return run(args.max_steps, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
