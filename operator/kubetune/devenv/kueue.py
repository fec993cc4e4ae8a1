"""Run the real Kueue (built by `kueuebuild`) against the embedded control plane.

Platform teams put GPU work behind Kueue, so kubetune is tested against Kueue's own
manager, not a fake: its CRDs come from the pinned module in Go's module cache, its
webhooks are served on loopback with a serving certificate from the control plane's CA
and registered with `url:` (the API server runs on this host, so no Service is needed).

Scope kept small on purpose, so a session's other tests are untouched:
- only the `pod` integration (plain-pod groups) is enabled, and only namespaces labelled
  `OPT_IN` are managed: the pod webhook is registered with that namespace selector too,
  so pods elsewhere never reach Kueue;
- only the webhooks of Kueue's own kinds and of pods are registered (the Job, JobSet,
  Deployment, ... webhooks of disabled integrations would refuse those kinds), and they
  are deleted again on stop, before the manager goes, so a stopped Kueue blocks nothing.
Credentials: an admin client certificate from the test PKI (system:masters), which is
acceptable for a test cluster; a real install uses Kueue's own ClusterRole.
"""

from __future__ import annotations

import base64
import copy
import logging
import os
import socket
import ssl
import time
import urllib.request
from pathlib import Path

import yaml

from . import kueuebuild
from .controlplane import ADMIN, ControlPlane
from .kubeapi import ApiError, KubeHttp
from .processes import start_child, stop_child

log = logging.getLogger(__name__)
OPT_IN = "kubetune.dev/kueue"  # namespace label value "enabled" lets Kueue manage its pods
NAMESPACE = "kueue-system"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
WEBHOOK_KINDS = {"MutatingWebhookConfiguration": "mutatingwebhookconfigurations",
                 "ValidatingWebhookConfiguration": "validatingwebhookconfigurations"}
WEBHOOK_NAME = "kubetune-kueue"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _kept(webhook: dict) -> bool:
    path = webhook["clientConfig"]["service"]["path"]
    return "kueue-x-k8s-io" in path or path.endswith("--v1-pod")


class Kueue:
    """`with Kueue(control_plane, workdir) as kueue:` installs and starts Kueue; idempotent
    `start()`, and `stop()` leaves no process and no webhook configuration behind."""

    def __init__(self, control_plane: ControlPlane, workdir: Path):
        self.control_plane = control_plane
        self.workdir = Path(workdir)
        self.api: KubeHttp = control_plane.client()
        self.process = None
        self.webhook_port = _free_port()
        self.health_port = _free_port()
        self.metrics_port = _free_port()
        self.log_path = self.workdir / "kueue.log"

    def __enter__(self) -> Kueue:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 180) -> Kueue:
        if self.process is not None and self.process.poll() is None:
            return self
        binary = kueuebuild.binary_path()
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"Kueue manager missing at {binary}: run "
                               "`python -m kubetune.devenv.kueuebuild build` (bootstrap does)")
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        manifests = kueuebuild.module_dir() / "config" / "components"
        self._install_crds(sorted((manifests / "crd" / "bases").glob("*.yaml")))
        self._ensure_namespace()
        certs = self.workdir / "certs"
        certs.mkdir(exist_ok=True)
        pair = self.control_plane.ca.issue("kueue-webhook", "kueue-webhook",
                                           hosts=("127.0.0.1",), server=True, client=False)
        (certs / "tls.crt").write_bytes(pair.cert.read_bytes())
        (certs / "tls.key").write_bytes(pair.key.read_bytes())
        config = self.workdir / "config.yaml"
        config.write_text(yaml.safe_dump(self._configuration(certs)))
        env = {**os.environ, "KUBECONFIG": str(self.control_plane.kubeconfig(ADMIN))}
        self.process = start_child(self._argv(binary, config, pair), self.log_path, env=env)
        self._wait_healthy(started + timeout)
        self._register_webhooks(manifests / "webhook" / "manifests.yaml")
        self._wait_webhook(started + timeout)
        log.info("Kueue ready in %.1f s", time.monotonic() - started)
        return self

    def stop(self) -> None:
        for plural in WEBHOOK_KINDS.values():
            try:
                self.api.delete_path(
                    f"/apis/admissionregistration.k8s.io/v1/{plural}/{WEBHOOK_NAME}")
            except ApiError as exc:
                if exc.status != 404:
                    log.warning("Kueue webhook configuration not deleted: %s", exc)
        if self.process is not None:
            stop_child(self.process, grace=10)
            self.process = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    # set-up ----------------------------------------------------------------------------
    def _configuration(self, certs: Path) -> dict:
        return {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
            "namespace": NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": f"127.0.0.1:{self.metrics_port}"},
            "webhook": {"port": self.webhook_port, "host": "127.0.0.1", "certDir": str(certs)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "manageJobsWithoutQueueName": False,
            "managedJobsNamespaceSelector": {"matchLabels": {OPT_IN: "enabled"}},
            "integrations": {"frameworks": ["pod"]},
            # The on-demand visibility API needs an APIService and a cert at /visibility.
            "featureGates": {"VisibilityOnDemand": False},
        }

    def _argv(self, binary: Path, config: Path, pair) -> list[str]:
        """The manager in a mount namespace of its own whose /etc is an overlay holding
        /etc/kueue/metrics/certs: v0.17.0 reads its metrics certificate from that fixed
        path whenever internal cert management is off (and that must be off: it would
        issue certificates for a Service name, not for the loopback address the API
        server calls). Nothing is written to the host's /etc."""
        upper, work = self.workdir / "etc-upper", self.workdir / "etc-work"
        metrics = upper / "kueue" / "metrics" / "certs"
        metrics.mkdir(parents=True, exist_ok=True)
        work.mkdir(exist_ok=True)
        (metrics / "tls.crt").write_bytes(pair.cert.read_bytes())
        (metrics / "tls.key").write_bytes(pair.key.read_bytes())
        script = ('mount -t overlay overlay -o lowerdir=/etc,upperdir="$1",workdir="$2" /etc'
                  ' && exec "$3" --config="$4" --zap-log-level=2')
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                str(upper), str(work), str(binary), str(config)]

    def _install_crds(self, files: list[Path], timeout: float = 60) -> None:
        names = []
        for path in files:
            crd = yaml.safe_load(path.read_text())
            names.append(crd["metadata"]["name"])
            try:
                self.api.request("POST", CRD_PATH, crd)
            except ApiError as exc:
                if exc.status != 409:
                    raise
        deadline = time.monotonic() + timeout
        for name in names:
            while True:
                current = self.api.get_path(f"{CRD_PATH}/{name}") or {}
                conditions = {c["type"]: c["status"]
                              for c in (current.get("status") or {}).get("conditions") or []}
                if conditions.get("Established") == "True":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Kueue CRD {name} not Established: {conditions}")
                time.sleep(0.2)

    def _ensure_namespace(self) -> None:
        try:
            self.api.request("POST", "/api/v1/namespaces", {
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        except ApiError as exc:
            if exc.status != 409:
                raise

    def _register_webhooks(self, manifest: Path) -> None:
        """Kueue's own webhook manifests, pointed at the loopback server and our CA."""
        bundle = self.control_plane.ca.cert_path.read_bytes()
        ca = base64.b64encode(bundle).decode()
        for doc in yaml.safe_load_all(manifest.read_text()):
            if not doc or doc.get("kind") not in WEBHOOK_KINDS:
                continue
            body = copy.deepcopy(doc)
            body["metadata"] = {"name": WEBHOOK_NAME}
            body["webhooks"] = []
            for webhook in doc["webhooks"]:
                if not _kept(webhook):
                    continue
                path = webhook["clientConfig"]["service"]["path"]
                webhook["clientConfig"] = {
                    "url": f"https://127.0.0.1:{self.webhook_port}{path}", "caBundle": ca}
                if path.endswith("--v1-pod"):
                    webhook["namespaceSelector"] = {"matchLabels": {OPT_IN: "enabled"}}
                body["webhooks"].append(webhook)
            plural = WEBHOOK_KINDS[doc["kind"]]
            base = f"/apis/admissionregistration.k8s.io/v1/{plural}"
            try:
                self.api.request("POST", base, body)
            except ApiError as exc:
                if exc.status != 409:
                    raise
                current = self.api.get_path(f"{base}/{WEBHOOK_NAME}")
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                self.api.request("PUT", f"{base}/{WEBHOOK_NAME}", body)

    # readiness -------------------------------------------------------------------------
    def _wait_healthy(self, deadline: float) -> None:
        url = f"http://127.0.0.1:{self.health_port}/readyz"
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Kueue exited ({self.process.returncode}):\n"
                                   + self.log_tail())
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("Kueue not ready:\n" + self.log_tail())
            time.sleep(0.5)

    def _wait_webhook(self, deadline: float) -> None:
        """A dry-run ResourceFlavor goes through Kueue's webhooks: answered means the
        API server reaches them over TLS with our CA."""
        context = ssl.create_default_context(cafile=str(self.control_plane.ca.cert_path))
        flavor = {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
                  "metadata": {"name": "kubetune-readiness-probe"}}
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.webhook_port), timeout=2) as s:
                    with context.wrap_socket(s, server_hostname="127.0.0.1"):
                        pass
                self.api.request("POST", "/apis/kueue.x-k8s.io/v1beta2/resourceflavors",
                                 flavor, query={"dryRun": "All"})
                return
            except (OSError, ApiError) as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Kueue's webhook does not answer ({exc}):\n"
                                       + self.log_tail()) from exc
            time.sleep(0.5)
