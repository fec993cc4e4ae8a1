"""The operator's API connection (kubeconn + kube.Kube) against a small HTTP server on
loopback: requests carry the credentials' token, a 401 (a rotated service-account
token) logs in again once and repeats the request, a Status body's message reaches
KubeError, and nothing imports the `kubernetes` client package."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kopf
import pytest

from kubetune.operator.kube import PODS, Kube, KubeError
from kubetune.operator.kubeconn import Connection


class ApiServer:
    """Accepts one token at a time; records (method, path, token, content type, body)."""

    def __init__(self, valid_token: str):
        self.valid_token = valid_token
        self.seen: list[tuple] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                outer.seen.append((self.command, self.path, token,
                                   self.headers.get("Content-Type"), body))
                if token != outer.valid_token:
                    status, payload = 401, {"kind": "Status", "message": "Unauthorized"}
                elif self.path.startswith("/api/v1/namespaces/ns/pods/missing"):
                    status, payload = 404, {"kind": "Status", "message": 'pods "missing" not found'}
                else:
                    status, payload = 200, {"kind": "Pod", "metadata": {"name": "p"}}
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    api = ApiServer("fresh")
    yield api
    api.close()


def logins(url: str, tokens: list[str]):
    """Credentials that hand out `tokens` in turn (the last one from then on)."""
    calls: list[str] = []

    def credentials() -> kopf.ConnectionInfo:
        token = tokens[min(len(calls), len(tokens) - 1)]
        calls.append(token)
        return kopf.ConnectionInfo(server=url, token=token)

    return credentials, calls


def test_requests_carry_the_token_and_json_bodies(server):
    credentials, calls = logins(server.url, ["fresh"])
    kube = Kube(Connection(credentials))
    kube.patch(PODS, "p", "ns", {"metadata": {"labels": {"a": "b"}}})
    method, path, token, content_type, body = server.seen[-1]
    assert (method, path, token) == ("PATCH", "/api/v1/namespaces/ns/pods/p", "fresh")
    assert content_type == "application/merge-patch+json"
    assert json.loads(body) == {"metadata": {"labels": {"a": "b"}}}
    assert kube.list(PODS, "ns", {"x": "1", "a": "2"}) is not None
    assert server.seen[-1][1] == "/api/v1/namespaces/ns/pods?labelSelector=a%3D2%2Cx%3D1"
    assert calls == ["fresh"] and kube.requests == {"PATCH": 1, "GET": 1}


def test_a_401_logs_in_again_once_and_repeats_the_request(server):
    credentials, calls = logins(server.url, ["rotated-away", "fresh"])
    kube = Kube(Connection(credentials))
    assert kube.get(PODS, "p", "ns") == {"kind": "Pod", "metadata": {"name": "p"}}
    assert [(m, t) for m, _, t, _, _ in server.seen] == [("GET", "rotated-away"), ("GET", "fresh")]
    assert calls == ["rotated-away", "fresh"]
    kube.get(PODS, "p", "ns")  # the new credentials stay: no further login
    assert calls == ["rotated-away", "fresh"]


def test_credentials_that_stay_refused_end_in_a_401_not_a_loop(server):
    credentials, calls = logins(server.url, ["wrong"])
    kube = Kube(Connection(credentials))
    with pytest.raises(KubeError) as refused:
        kube.get(PODS, "p", "ns")
    assert refused.value.status == 401 and "Unauthorized" in str(refused.value)
    assert len(server.seen) == 2 and len(calls) == 2


def test_errors_carry_the_status_message_and_a_404_get_is_none(server):
    credentials, _ = logins(server.url, ["fresh"])
    kube = Kube(Connection(credentials))
    assert kube.get(PODS, "missing", "ns") is None
    with pytest.raises(KubeError) as gone:
        kube.patch(PODS, "missing", "ns", {"metadata": {}})
    assert gone.value.status == 404 and 'pods "missing" not found' in str(gone.value)


def test_the_operator_imports_no_kubernetes_client():
    """Kopf imports `kubernetes` whenever it can (59 MiB of RSS); the operator must not
    need it, and the bootstrap keeps it out of the virtualenv the operator runs from."""
    code = ("import sys; import kubetune.operator.handlers; "
            "print('kubernetes' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "False"
