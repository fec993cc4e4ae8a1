# syntax=docker/dockerfile:1
# The multi-adapter server (python -m kubetune.workers.serve): base model + LoRA adapters
# behind an OpenAI-compatible API, for NVIDIA GPUs.
# Build from the repository root:  docker build -f images/server.Dockerfile -t ghcr.io/kubetune/server:0.1.0 .
# CUDA_IMAGE and TORCH_INDEX must agree; pin the base by digest when publishing.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

FROM ${CUDA_IMAGE} AS python
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

FROM python AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY constraints.txt ./
RUN pip install --index-url "${TORCH_INDEX}" torch==2.13.0
COPY pyproject.toml setup.py README.md ./
COPY operator/ operator/
COPY workers/ workers/
RUN pip install -c constraints.txt ".[serve]" && pip check

FROM python
LABEL org.opencontainers.image.title="kubetune-server" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.source="https://github.com/kubetune/kubetune" \
      dev.kubetune.image="ghcr.io/kubetune/server"
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    TRITON_CACHE_DIR=/tmp/triton
USER 65532:65532
WORKDIR /tmp
EXPOSE 8000
ENTRYPOINT ["python", "-m", "kubetune.workers.serve"]
