"""`python -m kubetune.operator` takes the flags the Helm chart passes and serves the
liveness and metrics endpoints it declares."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest
from ftj_harness import wait_for

from kubetune.devenv.s3 import free_port
from kubetune.operator.__main__ import parse_args

pytestmark = pytest.mark.integration


def test_chart_flags_parse():
    args = parse_args(["--standalone", "--liveness=http://0.0.0.0:8080/healthz",
                       "--log-format=json", "--namespace=a", "--namespace=b"])
    assert args.standalone and args.namespaces == ["a", "b"] and not args.all_namespaces
    assert args.liveness_endpoint == "http://0.0.0.0:8080/healthz"
    assert parse_args(["--all-namespaces"]).all_namespaces
    with pytest.raises(SystemExit):
        parse_args(["--standalone"])  # a scope is required, as in `kopf run`
    with pytest.raises(SystemExit):
        parse_args(["--namespace=a", "--all-namespaces"])


def test_process_serves_liveness_and_metrics_with_json_logs(cluster):
    health, metrics = free_port(), free_port()
    operator = cluster.operator({"KUBETUNE_METRICS_PORT": str(metrics)})
    log = cluster.workdir / "entry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kubetune.operator", "--standalone",
             f"--liveness=http://127.0.0.1:{health}/healthz", "--log-format=json",
             "--namespace=team-a"], env=operator.env, stdout=out, stderr=subprocess.STDOUT)
    try:
        def get(url):
            try:
                return urllib.request.urlopen(url, timeout=2).read().decode()
            except OSError:
                return None

        assert wait_for(lambda: get(f"http://127.0.0.1:{health}/healthz"), 30, "liveness")
        text = wait_for(lambda: get(f"http://127.0.0.1:{metrics}/metrics"), 30, "metrics")
        assert "# TYPE kubetune_operator_reconciles_total counter" in text
        assert 'kubetune_operator_api_requests_total' in text
    finally:
        proc.terminate()
        proc.wait(30)
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    assert lines and all("message" in json.loads(line) for line in lines)
