# syntax=docker/dockerfile:1
# kubetune's adapter agent, the sidecar beside vLLM in every ModelServe pod
# (python -m kubetune.workers.agent run), and the base-model fetch that runs before vLLM
# (python -m kubetune.workers.agent fetch-base). It downloads and verifies models and
# adapters and drives vLLM's runtime LoRA API: no torch, no CUDA, so a slim base.
# vLLM itself runs from vLLM's images (vllm/vllm-openai on GPU pools, its CPU image elsewhere).
# Build from the repository root:  docker build -f images/agent.Dockerfile -t ghcr.io/kubetune/agent:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY constraints.txt pyproject.toml setup.py README.md ./
COPY operator/ operator/
COPY workers/ workers/
RUN pip install -c constraints.txt ".[agent]" && pip check

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kubetune-agent" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.source="https://github.com/kubetune/kubetune" \
      dev.kubetune.image="ghcr.io/kubetune/agent"
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 65532:65532
WORKDIR /tmp
EXPOSE 8081
ENTRYPOINT ["python", "-m", "kubetune.workers.agent"]
