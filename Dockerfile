# syntax=docker/dockerfile:1
#
# The shardyard flow-run image: every Prefect flow run (ingest, transform, shard, pipeline)
# runs in a pod from this image, and the chart's registration Job uses it to register the
# deployments of /app/prefect.yaml.
#
#   docker build -t registry.example.com/shardyard:0.1.0 .
#
# Two stages: `build` resolves and installs the locked dependencies and the project into a
# virtualenv; `runtime` copies only that virtualenv and the files flow runs read at run time
# (prefect.yaml, the SQLMesh project, the flow sources its entrypoints name). No compiler,
# no pip cache, no credentials: settings and secrets arrive as environment variables from
# Kubernetes Secrets when a pod starts.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./

# The flow runs need only the core dependencies: no torch, litdata or webdataset (the
# [train] extra, for trainers), no embedded PostgreSQL or bundled data (the [demo] extra).
# The locked dependencies are installed before the sources are copied, so editing code does
# not re-download them.
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir -c requirements.lock .

COPY flows ./flows
COPY shards ./shards
RUN pip install --no-cache-dir --no-deps --force-reinstall -c requirements.lock . \
    && pip check


FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="shardyard" \
      org.opencontainers.image.description="Prefect flow runs of shardyard: raw data to versioned training shards" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric UID/GID so Kubernetes can verify runAsNonRoot; the base job template and
# the chart run pods as this user.
ARG APP_UID=10001
RUN groupadd --system --gid "${APP_UID}" shardyard \
    && useradd --system --uid "${APP_UID}" --gid shardyard --create-home \
        --home-dir /home/shardyard --shell /usr/sbin/nologin shardyard

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SHARDYARD_HOME=/home/shardyard/.shardyard

COPY --from=build /opt/venv /opt/venv

# Files stay owned by root and are only readable by the app user; pods mount writable
# scratch space (/tmp, the SQLMesh cache and log folders) over a read-only root filesystem.
WORKDIR /app
COPY prefect.yaml ./prefect.yaml
COPY transforms ./transforms
COPY flows ./flows
RUN mkdir -p /app/transforms/.cache /app/transforms/logs

USER ${APP_UID}:${APP_UID}

# Kubernetes passes the Prefect worker's command (`prefect flow-run execute`) as args; with
# no ENTRYPOINT they run as given.
CMD ["shardyard", "--help"]
