"""Operator benchmark: N FineTuneJobs applied at once to the real API server, the
operator's modes side by side in one run (each in a namespace of its own).

No node is registered, so every pod stays Pending (the scheduler finds no node) — the
operator's own cost is what is measured, counted in the API server's audit log (the
operator logs in as a user of its own), against the minimum a correct operator needs:
  * API writes per job lifecycle (apply -> children created -> the scheduler's verdict
    reported -> idle -> delete -> finalizer released), by verb and resource;
  * API requests per job per idle reconcile tick;
  * time from apply to children created (head pod present), p50 / p99;
  * the operator process's peak RSS (VmHWM).
Modes: `watches` (the default: pod and node watches, reads from their caches), `timer
only` (KUBETUNE_WATCH_CHILDREN=0: reads through the API on every tick), and with
`--baseline REV` the operator of git revision REV (e.g. HEAD before a change), run from
an exported copy of its tree.

Usage: .venv/bin/python bench/bench_operator.py [--jobs 200] [--steady 30] [--interval 10]
                                               [--baseline REV]...
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
# Writes no correct operator can skip, per job: ConfigMap, Service and head Pod created,
# the finalizer added and one status write (phase + observedGeneration); on delete: the
# pod deleted and the finalizer removed. Reads can be shared watches: the minimum per
# idle tick is 0. What a real operator adds on top is informational: an Event for the
# new attempt, and a status write with the scheduler's verdict (Unschedulable and why)
# once it comes; both are counted against this minimum, in whichever phase they fall.
MINIMUM = {"create": 3, "finalizer": 2, "status": 1, "delete": 1}
OPERATOR_USER = "kubetune-operator-bench"
VERBS = {"get": "GET", "list": "LIST", "watch": "WATCH", "create": "POST", "patch": "PATCH",
         "update": "PUT", "delete": "DELETE", "deletecollection": "DELETE"}
WRITES = ("POST", "PATCH", "PUT", "DELETE")


def job(name: str, namespace: str) -> dict:
    return {
        "apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "baseModel": {"uri": "hf://org/model"},
            "dataset": {"uri": "s3://data/train.jsonl"},
            "training": {"maxSteps": 100},
            "spot": {"enabled": True},
            "output": {"uri": "s3://out/runs"},
            "retention": {"checkpoints": "Retain"},
        },
    }


def operator_requests(control_plane, start: int) -> Counter:
    """The operator's requests after audit-log position `start`, by verb and resource."""
    counts: Counter = Counter()
    for event in control_plane.audit_events(OPERATOR_USER, start):
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        verb = VERBS.get(event["verb"], event["verb"].upper())
        counts[(verb, resource)] += 1
    return counts


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def requests(counts: Counter, verbs=None) -> int:
    return sum(n for (verb, _), n in counts.items()
               if verb != "WATCH" and (verbs is None or verb in verbs))


def show(title: str, counts: Counter, jobs: int) -> None:
    print(f"    {title}: {requests(counts) / jobs:.2f} requests/job, "
          f"{requests(counts, WRITES) / jobs:.2f} writes/job")
    for (verb, resource), n in sorted(counts.items()):
        print(f"      {verb:6} {resource:28} {n:6}  ({n / jobs:.2f}/job)")


def missing_requirements(rev: str) -> list[str]:
    """Pins of revision `rev`'s `operator` extra that this virtualenv does not hold (an
    older operator may need a package this one dropped, e.g. the kubernetes client)."""
    import tomllib
    from importlib import metadata

    text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:pyproject.toml"],
                          check=True, capture_output=True, text=True).stdout
    missing = []
    for pin in tomllib.loads(text)["project"]["optional-dependencies"]["operator"]:
        name, _, version = pin.partition("==")
        try:
            if metadata.version(name) == version:
                continue
        except metadata.PackageNotFoundError:
            pass
        missing.append(pin)
    return missing


def baseline_tree(rev: str, into: Path) -> dict:
    """An exported copy of revision `rev`'s operator, with what of its operator extra this
    virtualenv lacks installed beside it, and the env that runs it."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "operator", "workers"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    paths = [into / "operator", into / "workers"]
    missing = missing_requirements(rev)
    if missing:
        print(f"baseline {rev} needs {' '.join(missing)}: installing beside it", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                        str(into / "site"), *missing], check=True)
        paths.append(into / "site")
    return {"PYTHONPATH": ":".join(map(str, paths))}


def run_mode(cluster, workdir: Path, label: str, env: dict, namespace: str, args) -> dict:
    from kubetune.devenv.controlplane import Identity
    from kubetune.devenv.kubeapi import FINETUNEJOBS, PODS

    api, cp = cluster.api, cluster.control_plane
    cluster.namespace(namespace)
    kubeconfig = cp.kubeconfig(Identity(OPERATOR_USER, ("system:masters",)), namespace)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           "KUBETUNE_CONFIG": str(workdir / "none.yaml"),
           "KUBETUNE_RECONCILE_INTERVAL": str(args.interval), **env}
    log = open(workdir / f"operator-{namespace}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "kubetune.operator", "--standalone",
                             f"--namespace={namespace}", "--log-format=plain", "--quiet"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    out: dict = {"label": label}
    try:
        time.sleep(3)  # let it log in and start watching
        names = [f"job-{i:04d}" for i in range(args.jobs)]
        applied: dict[str, float] = {}
        created: dict[str, float] = {}
        done = threading.Event()

        def watch_children() -> None:
            while not done.is_set():
                pods = api.list(PODS, namespace)
                now = time.monotonic()
                for pod in pods:
                    created.setdefault(pod["metadata"]["name"].removesuffix("-head"), now)
                time.sleep(0.02)

        watcher = threading.Thread(target=watch_children, daemon=True)
        watcher.start()
        start = cp.audit_mark()
        began = time.monotonic()
        for name in names:
            applied[name] = time.monotonic()
            api.create(FINETUNEJOBS, job(name, namespace), namespace)
        deadline = time.monotonic() + 120
        while len(created) < args.jobs and time.monotonic() < deadline:
            time.sleep(0.1)
        done.set()
        out["apply_seconds"] = time.monotonic() - began
        out["delays"] = [created[n] - applied[n] for n in names if n in created]
        phases = {"apply -> children created": operator_requests(cp, start)}
        # Until every job's first tick has passed: what a timer-driven operator reports
        # about the scheduler's verdict lands here, not in the idle window.
        mark = cp.audit_mark()
        time.sleep(args.interval + 3)
        phases["children -> settled"] = operator_requests(cp, mark)
        mark, cpu = cp.audit_mark(), cpu_seconds(proc.pid)
        time.sleep(args.steady)
        phases[f"idle {args.steady:g}s (pods Pending)"] = idle = operator_requests(cp, mark)
        out["idle_cpu"] = (cpu_seconds(proc.pid) - cpu) / args.steady
        mark = cp.audit_mark()
        for name in names:
            api.delete(FINETUNEJOBS, name, namespace)
        deadline = time.monotonic() + 120
        while api.list(FINETUNEJOBS, namespace) and time.monotonic() < deadline:
            time.sleep(0.2)
        out["left"] = len(api.list(FINETUNEJOBS, namespace))
        phases["delete -> finalizer released"] = operator_requests(cp, mark)
        out["rss"] = peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    jobs = args.jobs
    total = sum(phases.values(), Counter())
    out["phases"] = phases
    out["writes"] = requests(total, WRITES) / jobs
    out["requests"] = requests(total) / jobs
    out["per_tick"] = requests(idle) / jobs / (args.steady / args.interval)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--steady", type=float, default=30.0, help="Seconds of idle state.")
    parser.add_argument("--interval", type=float, default=10.0, help="Reconcile timer (s).")
    parser.add_argument("--baseline", metavar="REV", action="append", default=[],
                        help="Also run git revision REV's operator (repeatable).")
    parser.add_argument("--modes", default="watches,timer", help="watches,timer (comma list)")
    args = parser.parse_args()

    from kubetune.devenv.cluster import Cluster

    workdir = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    modes = {"watches": ("watches", {}), "timer": ("timer only", {"KUBETUNE_WATCH_CHILDREN": "0"})}
    chosen = [modes[m] for m in args.modes.split(",") if m]
    for rev in args.baseline:
        chosen.append((f"baseline {rev}", baseline_tree(rev, workdir / f"baseline-{rev}")))
    results = []
    with Cluster(workdir / "cluster") as cluster:
        for i, (label, env) in enumerate(chosen):
            print(f"running {label} ...", flush=True)
            results.append(run_mode(cluster, workdir, label, env, f"bench-{i}", args))

    jobs, minimum = args.jobs, sum(MINIMUM.values())
    print(f"\n{jobs} jobs, reconcile timer {args.interval:g}s, idle window {args.steady:g}s; "
          f"minimum writes per lifecycle {minimum} ({', '.join(f'{k} {v}' for k, v in MINIMUM.items())})")
    for r in results:
        print(f"\n  [{r['label']}] API requests by the operator (watches listed, not counted):")
        for title, counts in r["phases"].items():
            show(title, counts, jobs)
    width = max(len(r["label"]) for r in results) + 2
    rows = [
        ("children created", lambda r: f"{len(r['delays'])}/{jobs}"),
        ("apply -> head pod p50 (s)", lambda r: f"{percentile(r['delays'], .5):.2f}"),
        ("apply -> head pod p99 (s)", lambda r: f"{percentile(r['delays'], .99):.2f}"),
        ("writes / job lifecycle", lambda r: f"{r['writes']:.2f}"),
        (f"  vs minimum {minimum}", lambda r: f"{r['writes'] / minimum:.2f}x"),
        ("requests / job lifecycle", lambda r: f"{r['requests']:.2f}"),
        ("requests / job / idle tick", lambda r: f"{r['per_tick']:.2f}"),
        ("operator peak RSS (MiB)", lambda r: f"{r['rss']:.1f}"),
        ("operator CPU while idle (%)", lambda r: f"{100 * r['idle_cpu']:.1f}"),
        ("jobs left after delete", lambda r: str(r["left"])),
    ]
    print("\n" + " " * 30 + "".join(f"{r['label']:>{width}}" for r in results))
    for title, cell in rows:
        print(f"{title:30}" + "".join(f"{cell(r):>{width}}" for r in results))
    if len(results) > 1:
        first = results[0]
        for other in results[1:]:
            print(f"{first['label']} / {other['label']}: writes "
                  f"{first['writes'] / other['writes']:.2f}x, requests "
                  f"{first['requests'] / other['requests']:.2f}x, apply->children p99 "
                  f"{percentile(first['delays'], .99) / percentile(other['delays'], .99):.2f}x, "
                  f"peak RSS {first['rss'] / other['rss']:.2f}x")
    ok = all(len(r["delays"]) == jobs and r["left"] == 0 for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
