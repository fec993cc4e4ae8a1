#!/usr/bin/env bash
# Set up everything the demo and the tests need on a fresh machine: a virtualenv with the
# pinned dependencies (constraints.txt), the real kubectl and helm binaries in .tools/bin,
# and the real control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler) built from Kubernetes' Go modules into .tools/, and vLLM's CPU build in
# .venv-vllm (what "the vLLM image" runs here; torch shared with .venv). Idempotent: a
# second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
# pip warns once per package about this machine's local index folders; keep real errors only.
quiet() { "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; }
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.kubetune-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing pinned dependencies (first run takes a few minutes)"
  quiet .venv/bin/pip install -q --upgrade pip setuptools wheel
  # torch first and exactly pinned: PyPI's build (CUDA libraries included, about 4.7 GB
  # installed; it runs on the CPU), so the resolver never weighs another torch.
  quiet .venv/bin/pip install -q -c constraints.txt torch==2.13.0
  quiet .venv/bin/pip install -q -c constraints.txt -e '.[dev]'
  # The operator image has no `kubernetes` client; one left over in an older .venv would
  # still be imported by Kopf (59 MiB more operator memory than the image has).
  .venv/bin/pip uninstall -y -q kubernetes >/dev/null 2>&1 || true
  echo "$want" > "$stamp"
fi
quiet .venv/bin/python -m kubetune.devenv.tools install
.venv/bin/python -m kubetune.devenv.cpbuild build
.venv/bin/python -m kubetune.devenv.kueuebuild build
.venv/bin/python -m kubetune.devenv.vllmenv build
