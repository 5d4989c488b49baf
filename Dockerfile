# banditrec, one serving process per container.
#
#   docker build -t banditrec:0.1.0 .
#   docker run -p 8020:8020 -v banditrec-data:/var/lib/banditrec/data banditrec:0.1.0
#
# The volume /var/lib/banditrec/data holds the SQLite event log, the snapshots and the
# archive. The model served is data/linucb_model.npz in it (absent: the server starts from
# the prior, with a warning), or BANDITREC_MODEL_PATH, which must then exist. With
# BANDITREC_STORE_URL=redis://... the log and the snapshots live in Redis and the container
# keeps only the archive (compose.yaml, docs/scale-out.md).
# Arguments after the image name go to `banditrec serve` (e.g. --workers 2).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a wheel of banditrec alone; the sources and build tools stay in this stage ------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# -- runtime: the wheel and its runtime dependencies only (no dev or bench extras) ---------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels

# A fixed numeric id, so that volumes and `runAsNonRoot` policies can name it.
RUN groupadd --system --gid 10001 banditrec \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/banditrec \
       --shell /usr/sbin/nologin banditrec \
    && mkdir -p /var/lib/banditrec/data/snapshots /var/lib/banditrec/data/archive \
       /var/cache/banditrec/numba \
    && chown -R 10001:10001 /var/lib/banditrec /var/cache/banditrec
COPY deploy/healthcheck.py /usr/local/lib/banditrec/healthcheck.py

# The settings' default paths are relative (data/events.db, data/snapshots, data/archive,
# data/linucb_model.npz): from this working directory they are all in the volume.
# numba caches compiled kernels beside the package by default, which this user cannot
# write: a cache of its own (compiled at the first start, reused while the container lives).
ENV BANDITREC_PORT=8020 \
    NUMBA_CACHE_DIR=/var/cache/banditrec/numba
WORKDIR /var/lib/banditrec
VOLUME ["/var/lib/banditrec/data"]
USER 10001:10001
EXPOSE 8020

# Healthy while /health answers 200, "ok" or "degraded" alike: a degraded server still
# serves decisions, and a restart would not bring back its disk or Redis (alert on it from
# the metrics instead; docs/operations.md). The first start compiles the kernels.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/usr/local/lib/banditrec/healthcheck.py"]

ENTRYPOINT ["banditrec", "serve", "--host", "0.0.0.0"]
