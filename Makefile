# The two fresh-machine commands (see README): `make demo` and `make test`.
# Each runs scripts/bootstrap.sh first, which creates .venv and installs the pinned
# dependencies and the kubectl/helm binaries when they are missing.
PY := .venv/bin/python

.PHONY: demo test test-fast bootstrap crds check-crds bench

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	@$(PY) -m kubetune.devenv.demo

test: bootstrap
	@.venv/bin/ruff check .
	@$(PY) -m pytest

test-fast: bootstrap
	@.venv/bin/ruff check .
	@$(PY) -m pytest -m "not slow"

crds: bootstrap
	@$(PY) -m kubetune.api.crdgen
	@cp crds/*.yaml helm/kubetune/crds/ 2>/dev/null || true

check-crds: bootstrap
	@$(PY) -m kubetune.api.crdgen --check

bench: bootstrap
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done
