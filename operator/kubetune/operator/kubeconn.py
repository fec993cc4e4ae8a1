"""The operator's connection to the API server: Kopf's credentials, urllib3's pool.

Kopf logs in for its watches through `login` ($KUBECONFIG when set, else the pod's
service account, else ~/.kube/config); the reconcile threads' requests use credentials
loaded by the same function, so the watches and the writes can never act as two
different users. The requests go through urllib3 (the HTTP layer the kubernetes client
itself sat on) with the TLS context and Authorization header Kopf derives from those
credentials. The `kubernetes` client package is therefore not needed, and it must not
be installed beside the operator: Kopf imports it whenever it is present, which cost
59 MiB of the operator's resident memory for a client we used only as an HTTP door.

A 401 means the credentials went stale (the kubelet rotates projected service-account
tokens): log in again, once, and repeat the request.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import NamedTuple

import kopf
import urllib3

CONNECT_SECONDS = 5.0
READ_SECONDS = 30.0
# Connection errors only: a request that reached the server is never sent twice.
RETRIES = urllib3.Retry(total=3, connect=3, read=0, redirect=0, status=0, other=0,
                        backoff_factor=0.2)


class _Session(NamedTuple):
    server: str
    pool: urllib3.PoolManager
    auth: dict[str, str]  # the Authorization header


def login(**kwargs) -> kopf.ConnectionInfo:
    """Credentials as Kopf's own login functions read them, at call time (tests point
    $KUBECONFIG at their own control plane). Kopf's login handler and `Connection`
    both call this."""
    kwargs.setdefault("settings", kopf.OperatorSettings())
    if os.environ.get("KUBECONFIG"):
        info = kopf.login_with_kubeconfig(**kwargs)
    else:
        info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    if info is None:
        raise kopf.LoginError("no Kubernetes credentials: $KUBECONFIG is not set, there is "
                              "no service-account token and no ~/.kube/config")
    return info


class Connection:
    """One pool of keep-alive connections to the API server, shared by the reconcile
    threads (urllib3's pool is thread-safe; a re-login swaps it under a lock)."""

    def __init__(self, credentials: Callable[[], kopf.ConnectionInfo] = login,
                 pool_size: int = 8):
        self._credentials = credentials
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self._session = self._connect()

    def _connect(self) -> _Session:
        info = self._credentials()
        options = {"maxsize": self._pool_size, "retries": RETRIES,
                   "timeout": urllib3.Timeout(connect=CONNECT_SECONDS, read=READ_SECONDS)}
        if info.server.startswith("https:"):
            options["ssl_context"] = info.as_ssl_context()
        pool = (urllib3.ProxyManager(info.proxy_url, **options) if info.proxy_url
                else urllib3.PoolManager(**options))
        return _Session(info.server.rstrip("/"), pool, info.as_http_headers())

    def _relogin(self, stale: _Session) -> None:
        with self._lock:
            if self._session is stale:  # else another thread has already done it
                self._session = self._connect()
                stale.pool.clear()

    def request(self, method: str, path: str, body: bytes | None,
                headers: dict[str, str]) -> tuple[int, bytes]:
        """(HTTP status, body) of one request to `path` (with its query string)."""
        session = self._session
        response = _send(session, method, path, body, headers)
        if response.status == 401:
            self._relogin(session)
            response = _send(self._session, method, path, body, headers)
        return response.status, response.data


def _send(session: _Session, method: str, path: str, body: bytes | None, headers: dict):
    return session.pool.request(method, session.server + path, body=body,
                                headers={**headers, **session.auth})
