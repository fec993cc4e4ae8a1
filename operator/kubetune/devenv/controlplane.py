"""The real Kubernetes control plane on this machine: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler, built from Kubernetes' own Go modules
(`cpbuild`), each its own process, all with TLS from a CA made at start-up.

The API server runs as on a cluster: Node and RBAC authorization, ServiceAccount token
signing and the TokenRequest API, PodSecurity and NodeRestriction admission, a service
CIDR. The controller manager runs every default controller (garbage collector,
Deployments/ReplicaSets, EndpointSlices, namespaces, node lifecycle with taint-based
eviction, pod GC, ServiceAccounts and the root CA ConfigMap); the scheduler runs its
default profile. What a cluster adds beyond this (kubelets, a CNI plugin, kube-proxy,
CoreDNS) is not here: `nodeagent` plays the kubelet's part.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import cpbuild
from .kubeapi import KubeHttp
from .pki import CertificateAuthority, KeyPair, service_account_keys
from .processes import start_child, stop_child
from .s3 import free_port

log = logging.getLogger("kubetune.devenv.controlplane")
SERVICE_CIDR = "10.96.0.0/16"
CLUSTER_CIDR = "10.244.0.0/16"
READY_TIMEOUT = 120.0


@dataclass(frozen=True)
class Identity:
    """A user the API server authenticates by client certificate."""

    name: str
    groups: tuple[str, ...] = ()


ADMIN = Identity("kubetune-admin", ("system:masters",))


class ControlPlane:
    """`with ControlPlane(workdir) as cp:` starts and stops the four components.

    `address` is where the API server listens and what it advertises: the pod network's
    host address, on port 443 as the `kubernetes` Service has it, so in-cluster clients
    that dial `https://kubernetes.default.svc` (Kopf's ServiceAccount login does) reach it
    without a kube-proxy. Each environment has an address of its own, so 443 is free."""

    def __init__(self, workdir: Path | None = None, address: str = "127.0.0.1", port: int = 443):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kubetune-cp-"))
        self.address = address
        self.binary = cpbuild.binary_path()
        self.processes: dict[str, subprocess.Popen] = {}
        self.port = port
        self.url = f"https://{address}:{self.port}"

    # lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> ControlPlane:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError(f"control plane binary missing at {self.binary}: run "
                               "`python -m kubetune.devenv.cpbuild build` (make bootstrap does)")
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._make_pki()
        self._start_etcd()
        self._start_apiserver()
        self.admin_kubeconfig = self.kubeconfig(ADMIN)
        self._wait_ready()
        self._start("kube-controller-manager", self._controller_manager_args())
        self._start("kube-scheduler", self._scheduler_args())
        self.started_seconds = time.monotonic() - started
        log.info("control plane ready at %s in %.1f s", self.url, self.started_seconds)
        return self

    def stop(self) -> None:
        """Components stop in reverse order, each with SIGTERM and then SIGKILL."""
        for name in reversed(list(self.processes)):
            stop_child(self.processes.pop(name), grace=10)

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory of each running component (from /proc), for the notes."""
        sizes = {}
        for name, process in self.processes.items():
            try:
                fields = Path(f"/proc/{process.pid}/status").read_text().split("\n")
            except FileNotFoundError:
                continue
            line = next(f for f in fields if f.startswith("VmRSS:"))
            sizes[name] = int(line.split()[1]) * 1024
        return sizes

    # clients ---------------------------------------------------------------------------
    def kubeconfig(self, identity: Identity, namespace: str = "default") -> Path:
        """A kubeconfig for `identity` (a client certificate signed by the CA)."""
        filename = identity.name.replace(":", "_")
        pair = self.ca.issue(f"user-{filename}", identity.name, identity.groups)
        # One file per user and namespace: handing out another namespace's kubeconfig
        # must not move the default namespace of one already in use.
        path = self.workdir / f"{filename}.{namespace}.kubeconfig"
        write_kubeconfig(path, self.url, self.ca.cert_path, pair, identity.name, namespace)
        return path

    def client(self, identity: Identity = ADMIN) -> KubeHttp:
        return KubeHttp.from_kubeconfig(self.kubeconfig(identity))

    # components ------------------------------------------------------------------------
    def _make_pki(self) -> None:
        pki = self.workdir / "pki"
        self.ca = CertificateAuthority(pki)
        hosts = ("localhost", "127.0.0.1", self.address, "10.96.0.1", "kubernetes",
                 "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local")
        self.etcd_server = self.ca.issue("etcd-server", "etcd", hosts=("127.0.0.1", "localhost"),
                                         server=True)
        self.etcd_client = self.ca.issue("apiserver-etcd-client", "kube-apiserver-etcd-client")
        self.serving = self.ca.issue("apiserver", "kube-apiserver", hosts=hosts, server=True,
                                     client=False)
        self.front_proxy = self.ca.issue("front-proxy-client", "front-proxy-client")
        self.kubelet_client = self.ca.issue("apiserver-kubelet-client",
                                            "kube-apiserver-kubelet-client", ("kubeadm:cluster-admins",))
        self.service_account = service_account_keys(pki)

    def _start(self, name: str, args: list[str]) -> None:
        self.processes[name] = start_child([str(self.binary), name, *args],
                                           self.workdir / f"{name}.log")

    def _start_etcd(self) -> None:
        client_port, peer_port = free_port(), free_port()
        self.etcd_url = f"https://127.0.0.1:{client_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        self._start("etcd", [
            "--name=default", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}", f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            f"--cert-file={self.etcd_server.cert}", f"--key-file={self.etcd_server.key}",
            f"--trusted-ca-file={self.ca.cert_path}", "--client-cert-auth",
            # Tests and demos throw the data away; fsync only costs time here.
            "--unsafe-no-fsync", "--log-level=warn", "--quota-backend-bytes=2147483648",
        ])

    def _start_apiserver(self) -> None:
        sa = self.service_account
        self.audit_log = self.workdir / "audit.log"
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(json.dumps({"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                                      "omitStages": ["RequestReceived"],
                                      "rules": [{"level": "Metadata"}]}))
        self._start("kube-apiserver", [
            f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
            "--audit-log-mode=blocking", "--audit-log-maxsize=0",
            f"--bind-address={self.address}", f"--advertise-address={self.address}",
            f"--secure-port={self.port}",
            f"--etcd-servers={self.etcd_url}", f"--etcd-cafile={self.ca.cert_path}",
            f"--etcd-certfile={self.etcd_client.cert}", f"--etcd-keyfile={self.etcd_client.key}",
            f"--tls-cert-file={self.serving.cert}", f"--tls-private-key-file={self.serving.key}",
            f"--client-ca-file={self.ca.cert_path}",
            f"--kubelet-client-certificate={self.kubelet_client.cert}",
            f"--kubelet-client-key={self.kubelet_client.key}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--requestheader-client-ca-file={self.ca.cert_path}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={self.front_proxy.cert}",
            f"--proxy-client-key-file={self.front_proxy.key}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-key-file={sa.cert}", f"--service-account-signing-key-file={sa.key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            "--allow-privileged=false", "--profiling=false", "--v=1",
            "--event-ttl=1h",
        ])

    def _component_args(self, user: str, name: str) -> list[str]:
        """What the controller manager and the scheduler share: their identity, their
        own secure port on loopback, one instance each (no leader election)."""
        kubeconfig = self.kubeconfig(Identity(user))
        return [
            f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            f"--cert-dir={self.workdir / f'{name}-certs'}",
            "--leader-elect=false", "--profiling=false", "--v=1",
        ]

    def _controller_manager_args(self) -> list[str]:
        return [
            *self._component_args("system:kube-controller-manager", "controller-manager"),
            "--use-service-account-credentials=true",
            f"--root-ca-file={self.ca.cert_path}",
            f"--service-account-private-key-file={self.service_account.key}",
            f"--cluster-signing-cert-file={self.ca.cert_path}",
            f"--cluster-signing-key-file={self.ca.pair.key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--cluster-cidr={CLUSTER_CIDR}", "--allocate-node-cidrs=false",
            "--controllers=*",
            # A lost node is noticed in seconds rather than the default 50 s.
            "--node-monitor-period=2s", "--node-monitor-grace-period=16s",
            "--terminated-pod-gc-threshold=1000",
        ]

    def _scheduler_args(self) -> list[str]:
        return self._component_args("system:kube-scheduler", "scheduler")

    def _wait_ready(self) -> None:
        """Until /readyz answers ok (every post-start hook done, RBAC bootstrapped)."""
        pair = KeyPair(*_client_pair(self.admin_kubeconfig))
        context = ssl.create_default_context(cafile=str(self.ca.cert_path))
        context.load_cert_chain(str(pair.cert), str(pair.key))
        deadline = time.monotonic() + READY_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}: "
                                       f"{self.log_tail(name)}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", context=context, timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.3)
        raise RuntimeError(f"kube-apiserver not ready after {READY_TIMEOUT:.0f} s ({last}): "
                           f"{self.log_tail('kube-apiserver')}")

    def audit_events(self, user: str | None = None, since: int = 0) -> list[dict]:
        """The API server's audit log (every request, at Metadata level) from line `since`
        on, optionally of one user: what a platform team reads to see who did what."""
        if not self.audit_log.exists():
            return []
        lines = self.audit_log.read_text().splitlines()[since:]
        events = [json.loads(line) for line in lines if line.strip()]
        return [e for e in events if user is None or e["user"]["username"] == user]

    def audit_mark(self) -> int:
        """A position in the audit log for `audit_events(since=...)`."""
        return len(self.audit_log.read_text().splitlines()) if self.audit_log.exists() else 0

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def wait_for_service_account(self, namespace: str, name: str = "default",
                                 timeout: float = 30) -> None:
        """Pods in a new namespace need its ServiceAccount, which a controller creates."""
        api = self.client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if api.get_path(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"serviceaccount {namespace}/{name} not created in {timeout} s")


def _client_pair(kubeconfig: Path) -> tuple[Path, Path]:
    user = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]
    return Path(user["client-certificate"]), Path(user["client-key"])


def write_kubeconfig(path: Path, server: str, ca: Path, pair: KeyPair | None, user: str,
                     namespace: str = "default", token_file: Path | None = None) -> Path:
    """A kubeconfig with one cluster, one user (certificate or token file), one context."""
    credentials: dict = ({"client-certificate": str(pair.cert), "client-key": str(pair.key)}
                         if pair else {"tokenFile": str(token_file)})
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "kubetune",
        "clusters": [{"name": "kubetune", "cluster": {"server": server,
                                                       "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "kubetune", "context": {"cluster": "kubetune", "user": user,
                                                      "namespace": namespace}}],
    }, indent=1))
    path.chmod(0o600)
    return path

