# syntax=docker/dockerfile:1
# The QLoRA trainer (python -m kubetune.workers.train) on Ray Train, for NVIDIA GPUs.
# Build from the repository root:  docker build -f images/trainer.Dockerfile -t ghcr.io/kubetune/trainer:0.1.0 .
# CUDA_IMAGE and TORCH_INDEX must agree (cu128 wheels on a CUDA 12.8 runtime); pin the
# base by digest when publishing. See images/README.md for what has not been checked.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

FROM ${CUDA_IMAGE} AS python
ENV DEBIAN_FRONTEND=noninteractive
# Ubuntu 22.04's own python3.11 (universe); pyproject requires >=3.11,<3.13.
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
# torch first, from the CUDA index and exactly the pyproject pin: PyPI's default wheel is
# built for another CUDA, and `2.13.0+cu128` satisfies `torch==2.13.0` below.
RUN pip install --index-url "${TORCH_INDEX}" torch==2.13.0
COPY pyproject.toml setup.py README.md ./
COPY operator/ operator/
COPY workers/ workers/
# bitsandbytes, peft, transformers, ray[train] ... all from the `train` extra.
RUN pip install -c constraints.txt ".[train]" && pip check

FROM python
LABEL org.opencontainers.image.title="kubetune-trainer" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.source="https://github.com/kubetune/kubetune" \
      dev.kubetune.image="ghcr.io/kubetune/trainer"
COPY --from=build /opt/venv /opt/venv
# Caches go under /tmp, which the operator mounts as an emptyDir: pods run with a
# read-only root filesystem.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    TRITON_CACHE_DIR=/tmp/triton \
    RAY_TMPDIR=/tmp/ray
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["python", "-m", "kubetune.workers.train"]
