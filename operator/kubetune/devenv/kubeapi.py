"""A minimal JSON-over-HTTPS Kubernetes client for the embedded environment.

The node agent, the demo and the tests talk to the API server like any other client,
through a kubeconfig (client certificate or ServiceAccount token); they need only a
handful of verbs, so a dependency-free client keeps them independent of the operator's
own client layer (which is what is under test).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml


class ApiError(RuntimeError):
    """A non-2xx answer; `status` is the HTTP code, `body` the decoded Status."""

    def __init__(self, status: int, body: dict | str):
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the REST API."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if sub:
            base += f"/{sub}"
        return base


PODS = Resource("", "v1", "pods")
NODES = Resource("", "v1", "nodes", namespaced=False)
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False)
CONFIGMAPS = Resource("", "v1", "configmaps")
SECRETS = Resource("", "v1", "secrets")
SERVICES = Resource("", "v1", "services")
EVENTS = Resource("", "v1", "events")
DEPLOYMENTS = Resource("apps", "v1", "deployments")
FINETUNEJOBS = Resource("kubetune.dev", "v1alpha1", "finetunejobs")
MODELSERVES = Resource("kubetune.dev", "v1alpha1", "modelserves")


class KubeHttp:
    """get / list / create / merge-patch / delete against one API server URL."""

    def __init__(self, base_url: str, timeout: float = 10.0, context: ssl.SSLContext | None = None,
                 token_file: Path | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.context = context
        self.token_file = token_file

    @classmethod
    def from_kubeconfig(cls, path: Path, timeout: float = 10.0) -> KubeHttp:
        """The current context's server, CA and credentials (certificate or token file)."""
        config = yaml.safe_load(Path(path).read_text())
        context = next(c["context"] for c in config["contexts"]
                       if c["name"] == config["current-context"])
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        tls = ssl.create_default_context(cafile=cluster["certificate-authority"])
        if "client-certificate" in user:
            tls.load_cert_chain(user["client-certificate"], user["client-key"])
        token = Path(user["tokenFile"]) if "tokenFile" in user else None
        return cls(cluster["server"], timeout, tls, token)

    def request(self, method: str, path: str, body=None, content_type="application/json", query=None):
        """One API call; the decoded JSON answer, or ApiError."""
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", "application/json")
        if self.token_file is not None:
            request.add_header("Authorization", f"Bearer {self.token_file.read_text().strip()}")
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read().decode(errors="replace")
            try:
                raise ApiError(exc.code, json.loads(raw)) from None
            except json.JSONDecodeError:
                raise ApiError(exc.code, raw) from None
        return json.loads(payload) if payload else {}

    def get(self, res: Resource, name: str, namespace: str | None = None) -> dict | None:
        try:
            return self.request("GET", res.path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def get_path(self, path: str) -> dict | None:
        """GET any API path; None for a 404."""
        try:
            return self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, res: Resource, namespace: str | None = None, label_selector: str | None = None) -> list[dict]:
        query = {"labelSelector": label_selector} if label_selector else None
        return self.request("GET", res.path(namespace), query=query).get("items", [])

    def create(self, res: Resource, body: dict, namespace: str | None = None) -> dict:
        return self.request("POST", res.path(namespace), body)

    def patch(self, res: Resource, name: str, patch: dict, namespace: str | None = None, sub: str | None = None) -> dict:
        return self.request(
            "PATCH", res.path(namespace, name, sub), patch, content_type="application/merge-patch+json"
        )

    def delete_path(self, path: str) -> None:
        """DELETE any API path; a 404 is fine."""
        try:
            self.request("DELETE", path)
        except ApiError as exc:
            if exc.status != 404:
                raise

    def delete(self, res: Resource, name: str, namespace: str | None = None) -> None:
        try:
            self.request("DELETE", res.path(namespace, name))
        except ApiError as exc:
            if exc.status != 404:
                raise
