# syntax=docker/dockerfile:1
# fedser edge client for NVIDIA GPUs (linux/amd64). Build from the repository root:
#   docker build -f deploy/docker/cuda.Dockerfile -t fedser-client:0.1.0-cuda .
# Run with the NVIDIA Container Toolkit: docker run --gpus all ... (host driver >= 580 for CUDA 13.0).
# PyPI's torch 2.11.0 wheels for Linux x86_64 are CUDA 13.0 builds that bring their own CUDA
# libraries (cuBLAS, cuDNN, ...) as wheels, so the small CUDA "base" image is enough underneath.
# For another CUDA line (older drivers): --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# and the matching nvidia/cuda base in both FROM lines. For reproducible builds also pin the base's digest.

FROM nvidia/cuda:13.0.0-base-ubuntu24.04 AS build
# Empty: torch from the default index (PyPI's CUDA 13.0 builds).
ARG TORCH_INDEX_URL=
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# python3-venv brings ensurepip, needed to create the virtual environment; gcc and libc6-dev compile
# model/_mkl_intel_paths.c (MKL's AVX2/AVX-512 paths on AMD CPUs: model/mkl_dispatch.py). Build stage only.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
# Versions are pinned; hadolint reads the optional `--index-url` expansion as an unpinned package.
# hadolint ignore=DL3013
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.11.0 torchaudio==2.11.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY model/ model/
COPY aggregator_service/ aggregator_service/
COPY edge_client/ edge_client/
COPY experiments/ experiments/
RUN pip install --no-cache-dir . \
    && python -c "import torch, torchaudio, edge_client; assert torch.version.cuda, 'not a CUDA build of torch'" \
    && python -c "from model.mkl_dispatch import shim_path; assert shim_path(), 'model/_mkl_intel_paths.c not compiled'"

FROM nvidia/cuda:13.0.0-base-ubuntu24.04 AS client-cuda
# The interpreter only (the venv's python links to /usr/bin/python3): no pip, venv or compiler.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 fedser \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin fedser
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/fedser/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /tmp
HEALTHCHECK --interval=60s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/fedser/healthcheck.py", "process", "fedser-client"]
ENTRYPOINT ["fedser-client", "--device", "cuda"]
