"""Pod networking for the project's own test hosts: a bridge per environment and a
network namespace per pod, as a CNI bridge plugin would set them up.

Each pod gets an address of its own on `10.244.<k>.0/24` (k picked per environment so
that several environments on one machine do not collide), a default route through the
bridge, and `/etc/hosts` and `/etc/resolv.conf` of its own (`ip netns exec` binds
`/etc/netns/<name>/*` over `/etc`). The host keeps `10.244.<k>.1`: the API server, S3
and node agents listen there, so pods reach them as they would reach cluster services.
Needs root and iproute2 (`ip`), which these machines have.
"""

from __future__ import annotations

import fcntl
import ipaddress
import itertools
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

NETNS_ETC = Path("/etc/netns")
PREFIX = "kt"  # every bridge, veth and namespace name starts with it
LOCK_FILE = "/run/kubetune-podnet.lock"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> None:
    """Remove namespaces and bridges whose environment process is gone (a killed run)."""
    listing = ip("-o", "link", "show", "type", "bridge", check=False).stdout
    for line in listing.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        parts = name.split("-")
        if name.startswith(f"{PREFIX}br") and len(parts) == 2 and parts[1].isdigit():
            if not _owner_alive(int(parts[1])):
                ip("link", "del", name, check=False)
    for entry in ip("netns", "list", check=False).stdout.splitlines():
        name = entry.split()[0]
        parts = name.split("-")
        if name.startswith(PREFIX) and len(parts) == 3 and parts[1].isdigit():
            if not _owner_alive(int(parts[1])):
                ip("netns", "del", name, check=False)
                shutil.rmtree(NETNS_ETC / name, ignore_errors=True)


@dataclass(frozen=True)
class PodAddress:
    netns: str
    ip: str
    hostname: str


class PodNetwork:
    """`with PodNetwork() as net:` a bridge with the host's gateway address; `attach()`
    gives a pod a namespace and an address, `detach()` removes them."""

    def __init__(self):
        self.owner = os.getpid()
        self.bridge = f"{PREFIX}br-{self.owner}"
        self._lock = threading.Lock()
        self._next = itertools.count(1)
        self._free: list[int] = list(range(2, 255))
        self._taken: set[int] = set()
        self.subnet: ipaddress.IPv4Network | None = None

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def start(self) -> PodNetwork:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise RuntimeError("pod networking needs root and iproute2 (`ip`): each pod gets a "
                               "network namespace of its own")
        with open(LOCK_FILE, "w") as lock:  # environments started at once pick distinct subnets
            fcntl.flock(lock, fcntl.LOCK_EX)
            sweep_stale()
            ip("link", "add", self.bridge, "type", "bridge")
            used = ip("-o", "-4", "addr", "show").stdout
            for k in range(1, 255):
                candidate = ipaddress.ip_network(f"10.244.{k}.0/24")
                if f" {candidate.network_address + 1}/" not in used:
                    self.subnet = candidate
                    break
            else:
                raise RuntimeError("no free 10.244.k.0/24 subnet for the pod network")
            ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
        return self

    def stop(self) -> None:
        for entry in ip("netns", "list", check=False).stdout.splitlines():
            name = entry.split()[0]
            if name.startswith(f"{PREFIX}-{self.owner}-"):
                self._remove_netns(name)
        ip("link", "del", self.bridge, check=False)

    def __enter__(self) -> PodNetwork:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def attach(self, hostname: str, hosts: str) -> PodAddress:
        """A new namespace with lo and eth0 up, an address, a default route, and the
        given /etc/hosts content; search domains make short Service names resolve."""
        with self._lock:
            if not self._free:
                raise RuntimeError(f"pod network {self.subnet} is full")
            host_part = self._free.pop(0)
            self._taken.add(host_part)
            serial = next(self._next)
        netns = f"{PREFIX}-{self.owner}-{serial}"
        address = str(self.subnet.network_address + host_part)
        tag = f"{self.owner % 100000}x{serial}"
        outside, inside = f"{PREFIX}v{tag}", f"{PREFIX}q{tag}"  # IFNAMSIZ: 15 characters
        # A reused address must not be answered at the MAC of the pod that had it before.
        ip("neigh", "flush", "to", address, check=False)
        ip("netns", "add", netns)
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", netns)
        ip("link", "set", outside, "master", self.bridge, "up")
        run = ("netns", "exec", netns, "ip")
        ip(*run, "link", "set", "lo", "up")
        ip(*run, "link", "set", inside, "name", "eth0")
        ip(*run, "addr", "add", f"{address}/24", "dev", "eth0")
        ip(*run, "link", "set", "eth0", "up")
        ip(*run, "route", "add", "default", "via", self.gateway)
        etc = NETNS_ETC / netns
        etc.mkdir(parents=True, exist_ok=True)
        pod = PodAddress(netns, address, hostname)
        self.write_hosts(pod, hosts)
        return pod

    @staticmethod
    def write_hosts(pod: PodAddress, hosts: str) -> None:
        """Rewrite the pod's /etc/hosts in place: a running pod sees it through its bind
        mount (a rename would leave the pod with the old file)."""
        path = NETNS_ETC / pod.netns / "hosts"
        content = f"127.0.0.1 localhost\n{pod.ip} {pod.hostname}\n{hosts}"
        if not path.exists() or path.read_text() != content:
            with open(path, "w") as out:
                out.write(content)

    @staticmethod
    def write_resolv(pod: PodAddress, namespace: str) -> None:
        (NETNS_ETC / pod.netns / "resolv.conf").write_text(
            f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local\n"
            "options ndots:5\n")

    def detach(self, pod: PodAddress) -> None:
        """Remove the pod's namespace and free its address, once: an address freed twice
        would be handed to two live pods."""
        self._remove_netns(pod.netns)
        host_part = int(ipaddress.ip_address(pod.ip)) - int(self.subnet.network_address)
        with self._lock:
            if host_part in self._taken:
                self._taken.discard(host_part)
                self._free.append(host_part)

    @staticmethod
    def _remove_netns(name: str) -> None:
        ip("netns", "del", name, check=False)  # takes the veth pair with it
        shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
