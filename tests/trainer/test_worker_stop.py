"""A worker pod's spot notice reaches the head: POST /stop on the head's status port,
only with the job's Ray auth token; the worker keeps its Ray node up until the head has
gone, then exits. (The whole path runs in tests/operator_integration/test_multi_worker.py.)"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from kubetune.devenv.s3 import free_port
from kubetune.workers.train.progress import serve_progress
from kubetune.workers.train.rayworker import ask_head_to_stop, wait_for_head_to_go


def post(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(url, data=b"", method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def head():
    stops: list[float] = []
    port = free_port()
    server = serve_progress(lambda: {"phase": "Training", "step": 3}, port, host="127.0.0.1",
                            stop=lambda: stops.append(time.time()), token="s3cret-token")
    yield f"http://127.0.0.1:{port}", stops, server
    server.shutdown()


def test_stop_needs_the_jobs_token(head):
    base, stops, _ = head
    assert post(f"{base}/stop", None) == 403
    assert post(f"{base}/stop", "guess") == 403
    assert stops == []
    assert post(f"{base}/stop", "s3cret-token") == 202
    assert len(stops) == 1
    with urllib.request.urlopen(f"{base}/progress", timeout=5) as answer:
        assert answer.read() == b'{"phase": "Training", "step": 3}'


def test_single_pod_trainers_offer_no_stop():
    port = free_port()
    server = serve_progress(lambda: {}, port, host="127.0.0.1", stop=lambda: None, token=None)
    try:
        assert post(f"http://127.0.0.1:{port}/stop", "") == 404
    finally:
        server.shutdown()


def test_worker_asks_once_then_waits_for_the_head_to_go(head):
    base, stops, server = head
    assert ask_head_to_stop(f"{base}/stop", "s3cret-token")
    node = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        def head_exits() -> None:  # after its checkpoint
            server.shutdown()
            server.server_close()

        threading.Timer(1.0, head_exits).start()
        started = time.monotonic()
        wait_for_head_to_go(node, f"{base}/progress", seconds=30)
        assert 0.9 < time.monotonic() - started < 10
        assert node.poll() is None  # the caller stops the Ray node; waiting does not
    finally:
        node.kill()
        node.wait()
    assert len(stops) == 1
