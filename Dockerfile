# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target service -t opengallery:service .    (default; no torch)
#   docker build --target training -t opengallery:training .  (CPU torch, for `opengallery train`)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src

# ---- service: build a venv with the service extra only (onnxruntime, FAISS, FastAPI) ----
FROM base AS service-build
COPY pyproject.toml constraints.txt README.md ./
COPY opengallery ./opengallery
COPY models ./models
COPY service ./service
# Extras to install: `--build-arg EXTRAS=service,scale` adds the PostgreSQL and Milvus clients
# (docker-compose.cluster.yml).
ARG EXTRAS=service
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install -c constraints.txt ".[${EXTRAS}]" \
    && if /opt/venv/bin/python -c "import torch" 2>/dev/null; then \
         echo "torch must not be in the service image" >&2; exit 1; fi

# ---- training: CPU PyTorch pinned exactly; pass TORCH_INDEX_URL to take the CPU-only wheels ----
FROM base AS training
ARG TORCH_INDEX_URL=""
COPY pyproject.toml constraints.txt README.md ./
COPY opengallery ./opengallery
COPY models ./models
COPY service ./service
COPY training ./training
COPY configs ./configs
# constraints.txt pins every version; hadolint cannot see through -c.
# hadolint ignore=DL3013
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0 \
    && pip install -c constraints.txt '.[train]' \
    && useradd --system --uid 10001 --create-home trainer
USER 10001
WORKDIR /home/trainer
ENTRYPOINT ["opengallery"]
CMD ["train", "--help"]

# ---- service runtime: last, so that a plain `docker build .` makes it ----
FROM base AS service
RUN groupadd --system --gid 10001 opengallery \
    && useradd --system --uid 10001 --gid opengallery --home-dir /app --shell /usr/sbin/nologin opengallery \
    && mkdir -p /app /data \
    && chown opengallery:opengallery /data
COPY --from=service-build /opt/venv /opt/venv
COPY --chown=opengallery:opengallery models/default /app/models/default
ENV PATH=/opt/venv/bin:$PATH \
    OPENGALLERY_HOST=0.0.0.0 \
    OPENGALLERY_PORT=8000 \
    OPENGALLERY_DATA_DIR=/data \
    OPENGALLERY_MODEL=/app/models/default
WORKDIR /app
USER 10001:10001
EXPOSE 8000
VOLUME ["/data"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
CMD ["opengallery", "serve"]
