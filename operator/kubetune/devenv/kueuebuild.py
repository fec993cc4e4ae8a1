"""Build Kueue's controller manager from its Go module in `kueue/` into `.tools/`, once.

Kueue is the real admission controller platform teams put GPU work behind; the tests run
the upstream manager (`sigs.k8s.io/kueue/cmd/kueue`, pinned in `kueue/go.mod` through a
`tool` directive) against the embedded control plane rather than a fake. Keyed like the
control plane (go.mod, go.sum), so an unchanged tree never rebuilds. `manifests_dir`
finds Kueue's own CRDs and webhook manifests in the Go module cache, so no copy of them
is committed. `python -m kubetune.devenv.kueuebuild build` is what the bootstrap runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from kubetune.devenv.cpbuild import TOOLS, go_build

MODULE = Path(__file__).resolve().parent / "kueue"
KUEUE_VERSION = "v0.17.0"
PACKAGE = "sigs.k8s.io/kueue/cmd/kueue"
BINARY = "kueue-manager"
LDFLAGS = f"-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion={KUEUE_VERSION}"


def build_key() -> str:
    digest = hashlib.sha256(KUEUE_VERSION.encode())
    for name in ("go.mod", "go.sum"):
        digest.update((MODULE / name).read_bytes())
    return digest.hexdigest()[:16]


def binary_path() -> Path:
    """Where the manager for this tree lives (KUBETUNE_KUEUE overrides it)."""
    override = os.environ.get("KUBETUNE_KUEUE")
    return Path(override) if override else TOOLS / f"kueue-{build_key()}" / BINARY


def build() -> Path:
    target = binary_path()
    if os.access(target, os.X_OK):
        return target
    print(f"kueuebuild: building Kueue {KUEUE_VERSION} controller manager into "
          f"{target.parent} (first time: module download and about 4 min of compiling "
          f"on 2 cores; later builds reuse Go's build cache)", flush=True)
    return go_build(MODULE, target, PACKAGE, LDFLAGS, "kueuebuild",
                    "Kueue's controller manager")


def module_dir() -> Path:
    """Kueue's module source in the Go module cache (downloaded if missing)."""
    go = shutil.which("go")
    if go is None:
        raise SystemExit("kueuebuild: Go is missing; Kueue's manifests come from its module.")
    out = subprocess.run(
        [go, "mod", "download", "-json", f"sigs.k8s.io/kueue@{KUEUE_VERSION}"],
        cwd=MODULE, check=True, capture_output=True, text=True).stdout
    return Path(json.loads(out)["Dir"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build or locate Kueue's manager.")
    parser.add_argument("action", choices=["build", "path", "module"])
    args = parser.parse_args(argv)
    action = {"build": build, "path": binary_path, "module": module_dir}[args.action]
    print(action())
    return 0


if __name__ == "__main__":
    sys.exit(main())
