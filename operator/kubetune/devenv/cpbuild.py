"""Build the real control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler) from the Go module in `controlplane/` into `.tools/`, once.

The binary is keyed by the module's go.mod, go.sum and main.go, so a pin change builds a
new one and an unchanged tree never rebuilds. `python -m kubetune.devenv.cpbuild` is what
the bootstrap runs; `path` prints where the binary is.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

MODULE = Path(__file__).resolve().parent / "controlplane"
TOOLS = Path(__file__).resolve().parents[3] / ".tools"
KUBERNETES_VERSION = "v1.37.2"
BINARY = "kubetune-controlplane"
# What `kubectl version` shows as the server; Go builds outside Kubernetes' own scripts
# otherwise report v0.0.0-master, which also confuses version-gated features.
LDFLAGS = " ".join([
    "-s", "-w",
    f"-X k8s.io/component-base/version.gitVersion={KUBERNETES_VERSION}",
    "-X k8s.io/component-base/version.gitMajor=1",
    "-X k8s.io/component-base/version.gitMinor=37",
    "-X k8s.io/component-base/version.gitTreeState=clean",
    "-X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z",
])


def build_key() -> str:
    digest = hashlib.sha256(KUBERNETES_VERSION.encode())
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((MODULE / name).read_bytes())
    return digest.hexdigest()[:16]


def binary_path() -> Path:
    """Where the binary for this tree lives (KUBETUNE_CONTROLPLANE overrides it)."""
    override = os.environ.get("KUBETUNE_CONTROLPLANE")
    return Path(override) if override else TOOLS / f"controlplane-{build_key()}" / BINARY


def _report_progress(tag: str, started: float, done: threading.Event,
                     counter: list[int]) -> None:
    while not done.wait(30):
        print(f"{tag}: still building ({int(time.monotonic() - started)} s, "
              f"{counter[0]} packages compiled)", flush=True)


def go_build(module: Path, target: Path, package: str, ldflags: str, tag: str,
             what: str) -> Path:
    """Build `package` of the Go module at `module` into `target` unless it is there.

    Shared by every binary the devenv builds from upstream Go modules (the control plane,
    Kueue): a `.partial` file renamed at the end, so an interrupted build never leaves a
    binary that looks finished; progress every 30 s, since a cold build takes minutes.
    """
    if os.access(target, os.X_OK):
        return target
    go = shutil.which("go")
    if go is None:
        raise SystemExit(
            f"{tag}: Go is missing. {what} is built from its Go modules: "
            "install Go 1.26 or newer and put `go` on PATH.")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    started = time.monotonic()
    done, counter = threading.Event(), [0]
    threading.Thread(target=_report_progress, args=(tag, started, done, counter),
                     daemon=True).start()
    process = subprocess.Popen(
        [go, "build", "-v", "-trimpath", "-ldflags", ldflags, "-o", str(partial), package],
        cwd=module, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "CGO_ENABLED": "0"},
    )
    tail: list[str] = []
    for line in process.stdout:
        counter[0] += 1
        tail = (tail + [line.rstrip()])[-40:]
    code = process.wait()
    done.set()
    if code != 0:
        raise SystemExit(f"{tag}: go build failed:\n" + "\n".join(tail))
    partial.rename(target)
    size = target.stat().st_size / 2**20
    print(f"{tag}: built {target} ({size:.0f} MiB) in {time.monotonic() - started:.0f} s",
          flush=True)
    return target


def build() -> Path:
    target = binary_path()
    if os.access(target, os.X_OK):
        return target
    print(f"cpbuild: building Kubernetes {KUBERNETES_VERSION} control plane + etcd into "
          f"{target.parent} (first time: module download and about 6 min of compiling "
          f"on 2 cores; later builds reuse Go's build cache)", flush=True)
    return go_build(MODULE, target, ".", LDFLAGS, "cpbuild",
                    "The embedded control plane (etcd, kube-apiserver, "
                    "kube-controller-manager, kube-scheduler)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build or locate the embedded control plane.")
    parser.add_argument("action", choices=["build", "path"])
    args = parser.parse_args(argv)
    print(build() if args.action == "build" else binary_path())
    return 0


if __name__ == "__main__":
    sys.exit(main())
