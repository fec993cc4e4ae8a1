"""Spot interruption -> next attempt's pods: how long, with the pod/node watches and with
the reconcile timer alone, side by side in one run.

The real control plane and the node agent the operator integration tests use; the
trainer image is mapped to a stand-in that sleeps and, on SIGTERM, exits 75 ("preempted,
checkpoint saved") at once — what is measured is the operator's reaction, not a
checkpoint upload. Jobs run in parallel, each interrupted in turn by
  * an Eviction (what a node-termination handler or Karpenter does),
  * a NoExecute spot-interruption taint on its node (the taint manager evicts),
  * the deletion of its Node (the machine is gone),
and the time from the interrupting API call to the next attempt's head pod existing is
recorded (polled every 20 ms). Spot backoff is 0 s. For the Node deletions it also prints
how far the end recorded for the vanished pod (status.attemptsUsage: its GPU time ends
there) lies from the deletion call: what a GPU-second figure for a pod lost with its
node is off by, per GPU.

Usage: .venv/bin/python bench/bench_interruptions.py [--jobs 10] [--rounds 2] [--interval 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_operator import percentile  # noqa: E402

NAMESPACE = "interrupt"
SPOT = {"karpenter.sh/capacity-type": "spot"}
IMAGE = "bench.local/sleeper:1"
KINDS = ("eviction", "taint", "node-deletion")
SLEEPER = """#!/bin/sh
# The trainer's stand-in: idle until SIGTERM, then "checkpoint saved" (exit 75).
trap 'exit 75' TERM
while :; do sleep 1 & wait $!; done
"""


def sleeper_image(folder: Path) -> Path:
    """A folder the node agent takes for an image's virtualenv: its bin/python sleeps."""
    (folder / "bin").mkdir(parents=True, exist_ok=True)
    script = folder / "bin" / "python"
    script.write_text(SLEEPER)
    script.chmod(0o755)
    for path in (folder, folder / "bin"):
        path.chmod(0o755)
    return folder


def job(name: str) -> dict:
    return {
        "apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "baseModel": {"uri": "hf://org/model"},
            "dataset": {"uri": "s3://data/train.jsonl"},
            "training": {"maxSteps": 100},
            "resources": {"workers": 1, "gpusPerWorker": 0, "cpu": "100m", "memory": "64Mi"},
            "spot": {"enabled": True, "strategy": "StayOnSpot", "maxRecoveries": 1000,
                     "checkpointBudgetSeconds": 1,
                     "backoff": {"initialSeconds": 0, "maxSeconds": 0}},
            "images": {"trainer": IMAGE},
            "output": {"uri": "s3://out/runs"},
            "retention": {"checkpoints": "Retain"},
        },
    }


class Heads:
    """Polls the jobs' head pods (one LIST every 20 ms) and notes when each attempt's
    pod first appeared, first ran, and was last seen (a new attempt's head pod has the
    same name: it can only be created once the old one is gone from the API)."""

    def __init__(self, api):
        self.api = api
        self.created: dict[tuple[str, int], float] = {}
        self.running: dict[tuple[str, int], tuple[float, str]] = {}
        self.gone: dict[tuple[str, int], float] = {}
        self._present: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        from kubetune.devenv.kubeapi import PODS

        while not self._stop.is_set():
            now = time.monotonic()
            try:
                pods = self.api.list(PODS, NAMESPACE)
            except Exception:  # a hiccup under load: the next poll catches up
                time.sleep(0.05)
                continue
            present = set()
            for pod in pods:
                meta = pod["metadata"]
                labels = meta.get("labels") or {}
                if "kubetune.dev/attempt" not in labels:
                    continue
                key = (labels["kubetune.dev/finetunejob"], int(labels["kubetune.dev/attempt"]))
                present.add(key)
                if meta.get("deletionTimestamp"):
                    continue
                self.created.setdefault(key, now)
                if (pod.get("status") or {}).get("phase") == "Running":
                    self.running.setdefault(key, (now, pod["spec"].get("nodeName", "")))
            for key in self._present - present:
                self.gone.setdefault(key, now)
            self._present = present
            time.sleep(0.02)

    def __enter__(self) -> Heads:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def recorded_end(api, name: str, attempt: int) -> float | None:
    """The end the job's status records for the head pod of `attempt` (epoch seconds)."""
    from datetime import datetime

    from kubetune.devenv.kubeapi import FINETUNEJOBS

    status = (api.get(FINETUNEJOBS, name, NAMESPACE) or {}).get("status") or {}
    for usage in status.get("attemptsUsage") or []:
        if usage.get("attempt") == attempt:
            for pod in usage.get("pods") or []:
                if pod.get("name") == f"{name}-head" and pod.get("endTime"):
                    stamp = pod["endTime"].replace("Z", "+00:00")
                    return datetime.fromisoformat(stamp).timestamp()
    return None


def measure(cluster, agent, heads: Heads, names: list[str], kind: str, rounds: int,
            serial: list[int], end_errors: list[float | None], record_wait: float,
            after_gone: list[float]) -> list[float]:
    """`rounds` interruptions of `kind` for every job; seconds to the next head pod.
    `after_gone` gets the operator's own share of each: from the old head pod gone
    from the API (after the node agent confirmed it stopped, or the operator deleted
    it on a lost node) to the new one created.
    Node deletions add to `end_errors` the recorded end minus the deletion call's time,
    or None when no end was recorded within `record_wait` s: the operator never saw that
    pod run (timer only: it started and vanished between two ticks), so its GPU time is
    missing from status."""
    from kubetune.devenv import spot
    from kubetune.devenv.nodeagent import NodeTemplate

    api = cluster.api
    latencies = []
    for _ in range(rounds):
        attempts = {n: wait_for(lambda n=n: max((a for j, a in heads.created if j == n),
                                                default=0), 180, f"{n} created") for n in names}
        for n in names:  # the current attempt runs, on a node
            wait_for(lambda n=n: (n, attempts[n]) in heads.running, 180, f"{n} running")
        if kind != "eviction":  # room for the next attempts before the nodes go
            for _ in range(2):
                serial[0] += 1
                agent.add_node(NodeTemplate(f"spot-{serial[0]}", SPOT))
        started: dict[str, float] = {}
        deleted_at: dict[str, float] = {}
        if kind == "eviction":
            for n in names:
                started[n] = time.monotonic()
                spot.evict(api, NAMESPACE, f"{n}-head")
        else:
            nodes: dict[str, list[str]] = {}
            for n in names:
                nodes.setdefault(heads.running[(n, attempts[n])][1], []).append(n)
            for node, jobs in nodes.items():
                now, wall = time.monotonic(), time.time()
                for n in jobs:
                    started[n] = now
                    if kind == "node-deletion":
                        deleted_at[n] = wall
                if kind == "taint":
                    spot.taint_no_execute(api, node)
                else:
                    spot.delete_node(api, node)
        for n in names:
            wait_for(lambda n=n: (n, attempts[n] + 1) in heads.created, 180,
                     f"{n} attempt {attempts[n] + 1}")
            latencies.append(heads.created[(n, attempts[n] + 1)] - started[n])
            after_gone.append(heads.created[(n, attempts[n] + 1)] - heads.gone[(n, attempts[n])])
        for n in deleted_at:
            try:
                end = wait_for(lambda n=n: recorded_end(api, n, attempts[n]), record_wait,
                               f"{n} attempt {attempts[n]} end recorded")
            except TimeoutError:
                end_errors.append(None)
            else:
                end_errors.append(end - deleted_at[n])
        if kind == "taint":  # tainted nodes host nothing of ours any more: retire them
            for node in nodes:
                spot.delete_node(api, node)
    return latencies


def run_mode(cluster, agent, workdir: Path, kubeconfig: Path, label: str, env: dict,
             names: list[str], rounds: int, serial: list[int], record_wait: float) -> dict:
    """Latencies by kind, and under "end error" the node deletions' recorded-end errors
    (None: not recorded)."""
    from kubetune.devenv.kubeapi import FINETUNEJOBS

    log = open(workdir / f"operator-{label.replace(' ', '-')}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "kubetune.operator", "--standalone",
                             f"--namespace={NAMESPACE}", "--log-format=plain", "--verbose"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    results: dict[str, list] = {"end error": []}
    try:
        time.sleep(3)
        with Heads(cluster.api) as heads:
            for n in names:
                cluster.api.create(FINETUNEJOBS, job(n), NAMESPACE)
            for kind in KINDS:
                began = time.monotonic()
                results[f"{kind} after gone"] = after_gone = []
                results[kind] = measure(cluster, agent, heads, names, kind, rounds, serial,
                                        results["end error"], record_wait, after_gone)
                print(f"  {label}: {len(results[kind])} x {kind} in "
                      f"{time.monotonic() - began:.0f}s", flush=True)
        for n in names:
            cluster.api.delete(FINETUNEJOBS, n, NAMESPACE)
        wait_for(lambda: not cluster.api.list(FINETUNEJOBS, NAMESPACE), 120, "jobs deleted")
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10, help="Jobs interrupted in parallel.")
    parser.add_argument("--rounds", type=int, default=2, help="Interruptions per job and kind.")
    parser.add_argument("--interval", type=float, default=10.0, help="Reconcile timer (s).")
    args = parser.parse_args()

    from kubetune.devenv.cluster import Cluster
    from kubetune.devenv.controlplane import Identity
    from kubetune.devenv.nodeagent import NodeAgent, NodeTemplate

    workdir = Path(tempfile.mkdtemp(prefix="bench-interruptions-"))
    image = sleeper_image(workdir / "sleeper")
    modes = [("watches", {}), ("timer only", {"KUBETUNE_WATCH_CHILDREN": "0"})]
    results = {}
    began = time.monotonic()
    with Cluster(workdir / "cluster") as cluster:
        cluster.namespace(NAMESPACE, labels={})
        kubeconfig = cluster.control_plane.kubeconfig(
            Identity("kubetune-operator-bench", ("system:masters",)), NAMESPACE)
        config = workdir / "config.yaml"
        config.write_text("spotProvider: karpenter\ntrainerStatusPort: 18080\n")
        serial = [0]
        nodes = [NodeTemplate(f"spot-{i}", SPOT) for i in range(2)]
        serial[0] = len(nodes)
        with NodeAgent(cluster.control_plane, cluster.network, workdir / "nodes", nodes,
                       image_environments={IMAGE.split(":")[0]: image}) as agent:
            for i, (label, extra) in enumerate(modes):
                env = {**os.environ, "KUBECONFIG": str(kubeconfig),
                       "KUBETUNE_CONFIG": str(config), "PYTHONUNBUFFERED": "1",
                       "KUBETUNE_RECONCILE_INTERVAL": str(args.interval), **extra}
                names = [f"m{i}-job-{j:02d}" for j in range(args.jobs)]
                results[label] = run_mode(cluster, agent, workdir, kubeconfig, label, env,
                                          names, args.rounds, serial, 2 * args.interval + 5)

    print(f"\nspot interruption -> next attempt's head pod created ({args.jobs} jobs at once x "
          f"{args.rounds} rounds per kind; timer {args.interval:g}s; {time.monotonic() - began:.0f}s "
          f"in all)")
    print(f"  {'kind':14} {'mode':11} {'n':>3} {'p50':>7} {'p99':>7} {'max':>7}")
    for kind in KINDS:
        for label, _ in modes:
            values = results[label][kind]
            print(f"  {kind:14} {label:11} {len(values):3} {percentile(values, .5):6.2f}s "
                  f"{percentile(values, .99):6.2f}s {max(values):6.2f}s")
        fast, slow = results["watches"][kind], results["timer only"][kind]
        print(f"  {kind:14} {'ratio':11}     {percentile(slow, .5) / percentile(fast, .5):6.1f}x "
              f"{percentile(slow, .99) / percentile(fast, .99):6.1f}x  (timer only / watches)")
    print("\nof which the operator's own share: the old head pod gone from the API -> the new"
          " one created")
    for kind in KINDS:
        for label, _ in modes:
            values = results[label][f"{kind} after gone"]
            print(f"  {kind:14} {label:11} {len(values):3} {percentile(values, .5):6.2f}s "
                  f"{percentile(values, .99):6.2f}s {max(values):6.2f}s")
    print("\nNode deleted -> the vanished pod's recorded end, minus the deletion call's time"
          " (its GPU time is off by this, per GPU)")
    for label, _ in modes:
        found = [e for e in results[label]["end error"] if e is not None]
        missing = len(results[label]["end error"]) - len(found)
        spread = (f"p50 {percentile(found, .5):6.2f}s  p99 {percentile(found, .99):6.2f}s  "
                  f"min {min(found):6.2f}s  max {max(found):6.2f}s" if found else "")
        print(f"  {label:11} {len(found):3} recorded, {missing} not (never seen running: "
              f"no GPU time in status)  {spread}")
    print(f"workdir (operator logs): {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
