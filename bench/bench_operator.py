"""Operator benchmark: N FineTuneJobs applied at once to the real API server.

No node is registered, so every pod stays Pending (the scheduler finds no node) — the
operator's own cost is what is measured, counted in the API server's audit log (the
operator logs in as a user of its own), side by side with the minimum a correct
operator needs:
  * API requests per job lifecycle (apply -> children created -> steady for a while ->
    delete -> finalizer released), by verb and phase, versus the minimum;
  * time from apply to children created (head pod present), p50 / p99;
  * the operator process's peak RSS (VmHWM).

Usage: .venv/bin/python bench/bench_operator.py [--jobs 200] [--steady 30] [--interval 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "bench"
# Writes no correct operator can skip, per job: ConfigMap, Service and head Pod created,
# the finalizer added and one status write (phase + observedGeneration); on delete: the
# pod deleted and the finalizer removed. Reads are shared watches (not counted per job).
MINIMUM = {"create": 5, "delete": 2}


def job(name: str) -> dict:
    return {
        "apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "baseModel": {"uri": "hf://org/model"},
            "dataset": {"uri": "s3://data/train.jsonl"},
            "training": {"maxSteps": 100},
            "spot": {"enabled": True},
            "output": {"uri": "s3://out/runs"},
            "retention": {"checkpoints": "Retain"},
        },
    }


OPERATOR_USER = "kubetune-operator-bench"
VERBS = {"get": "GET", "list": "GET", "watch": "WATCH", "create": "POST", "patch": "PATCH",
         "update": "PUT", "delete": "DELETE", "deletecollection": "DELETE"}


def operator_requests(control_plane, start: int) -> Counter:
    """The operator's requests after audit-log position `start`, by verb and resource."""
    counts: Counter = Counter()
    for event in control_plane.audit_events(OPERATOR_USER, start):
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        counts[(VERBS.get(event["verb"], event["verb"].upper()), resource)] += 1
    return counts


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def show(title: str, counts: Counter, jobs: int) -> None:
    total = sum(n for (verb, _), n in counts.items() if verb != "WATCH")
    print(f"  {title}: {total / jobs:.2f} requests/job")
    for (verb, resource), n in sorted(counts.items()):
        print(f"    {verb:6} {resource:28} {n:6}  ({n / jobs:.2f}/job)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--steady", type=float, default=30.0, help="Seconds of steady state.")
    parser.add_argument("--interval", type=float, default=10.0, help="Reconcile timer (s).")
    args = parser.parse_args()

    from kubetune.devenv.cluster import Cluster
    from kubetune.devenv.controlplane import Identity
    from kubetune.devenv.kubeapi import FINETUNEJOBS, PODS

    workdir = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    with Cluster(workdir / "cluster") as cluster:
        api, cp = cluster.api, cluster.control_plane
        cluster.namespace(NAMESPACE)
        kubeconfig = cp.kubeconfig(Identity(OPERATOR_USER, ("system:masters",)), NAMESPACE)
        env = {**os.environ, "KUBECONFIG": str(kubeconfig),
               "KUBETUNE_CONFIG": str(workdir / "none.yaml"),
               "KUBETUNE_RECONCILE_INTERVAL": str(args.interval)}
        log = open(workdir / "operator.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "kubetune.operator", "--standalone",
                                 f"--namespace={NAMESPACE}", "--log-format=plain", "--quiet"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            time.sleep(3)  # let it log in and start watching
            names = [f"job-{i:04d}" for i in range(args.jobs)]
            applied: dict[str, float] = {}
            created: dict[str, float] = {}
            done = threading.Event()

            def watch_children() -> None:
                while not done.is_set():
                    pods = api.list(PODS, NAMESPACE)
                    now = time.monotonic()
                    for pod in pods:
                        owner = pod["metadata"]["name"].removesuffix("-head")
                        created.setdefault(owner, now)
                    time.sleep(0.02)

            watcher = threading.Thread(target=watch_children, daemon=True)
            watcher.start()
            start = cp.audit_mark()
            began = time.monotonic()
            for name in names:
                applied[name] = time.monotonic()
                api.create(FINETUNEJOBS, job(name), NAMESPACE)
            print(f"applied {args.jobs} FineTuneJobs in {time.monotonic() - began:.2f}s")
            deadline = time.monotonic() + 120
            while len(created) < args.jobs and time.monotonic() < deadline:
                time.sleep(0.1)
            settled = time.monotonic()
            delays = [created[n] - applied[n] for n in names if n in created]
            create_phase = operator_requests(cp, start)
            mark = cp.audit_mark()
            time.sleep(args.steady)
            steady_phase = operator_requests(cp, mark)
            mark = cp.audit_mark()
            for name in names:
                api.delete(FINETUNEJOBS, name, NAMESPACE)
            deadline = time.monotonic() + 120
            while api.list(FINETUNEJOBS, NAMESPACE) and time.monotonic() < deadline:
                time.sleep(0.2)
            left = len(api.list(FINETUNEJOBS, NAMESPACE))
            delete_phase = operator_requests(cp, mark)
            done.set()
            rss = peak_rss_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()

    jobs = args.jobs
    print(f"\n{jobs} jobs, reconcile timer {args.interval:g}s, steady window {args.steady:g}s")
    print(f"children created for {len(delays)}/{jobs} jobs; apply -> head pod present: "
          f"p50 {percentile(delays, 0.5):.2f}s  p99 {percentile(delays, 0.99):.2f}s  "
          f"max {max(delays):.2f}s  (all within {settled - began:.1f}s of the first apply)")
    print("API requests by the operator (watches listed, not counted per job):")
    show("apply -> children created", create_phase, jobs)
    show(f"steady {args.steady:g}s (pods Pending)", steady_phase, jobs)
    show("delete -> finalizer released", delete_phase, jobs)
    lifecycle = sum(n for (verb, _), n in (create_phase + steady_phase + delete_phase).items()
                    if verb != "WATCH") / jobs
    writes = sum(n for (verb, _), n in (create_phase + delete_phase).items()
                 if verb in ("POST", "PATCH", "PUT", "DELETE")) / jobs
    minimum = sum(MINIMUM.values())
    ticks = args.steady / args.interval
    steady_per_tick = sum(n for (verb, _), n in steady_phase.items() if verb != "WATCH") \
        / jobs / ticks
    print(f"\nper job lifecycle: {lifecycle:.2f} requests (writes on create+delete: "
          f"{writes:.2f} vs minimum {minimum}: {writes / minimum:.2f}x); steady: "
          f"{steady_per_tick:.2f} requests per job per timer tick (minimum 1: list its pods)")
    print(f"jobs left after delete: {left}")
    print(f"operator peak RSS: {rss:.1f} MiB")
    return 0 if len(delays) == jobs and left == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
