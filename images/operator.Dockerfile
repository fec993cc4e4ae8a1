# syntax=docker/dockerfile:1
# The kubetune operator: Kopf, urllib3 and prometheus_client, nothing for training or serving.
# Build from the repository root:  docker build -f images/operator.Dockerfile -t ghcr.io/kubetune/operator:0.1.0 .
# Pin the base by digest when publishing (tags move); see images/README.md.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml setup.py README.md constraints.txt ./
COPY operator/ operator/
COPY workers/ workers/
# A regular (non-editable) install: the venv holds everything, /src is left behind.
RUN pip install -c constraints.txt ".[operator]" && pip check

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kubetune-operator" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.source="https://github.com/kubetune/kubetune" \
      dev.kubetune.image="ghcr.io/kubetune/operator"
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Numeric, so kubelet's runAsNonRoot check can verify it without /etc/passwd;
# the chart runs the pod as the same uid/gid.
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["python", "-m", "kubetune.operator"]
