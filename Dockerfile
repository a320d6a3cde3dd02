# syntax=docker/dockerfile:1
#
# agent-fabric service image.
#   build:  scripts/ci/build.sh   (tags the image with the git commit SHA)
#   run:    docker run -p 8080:8080 <image>              -> agent-fabric serve
#           docker run <image> migrate | setup-streams    -> one-shot commands
# Kubernetes runs /app/scripts/ci/run-migrations.sh in an init container with the same image.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: install the package and its dependencies into a self-contained venv ----
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Metadata first, so a change in src/ alone does not bust the layer that upgrades pip.
COPY pyproject.toml README.md ./
RUN pip install --upgrade pip setuptools wheel
COPY src ./src
# A regular (non-editable) install: the runtime stage needs the venv only, not /src.
RUN pip install . \
 && python -c "import agent_fabric" \
 && test -x /opt/venv/bin/agent-fabric

# ---- runtime: slim base + the venv + the files the CLI reads at run time ----
FROM ${PYTHON_IMAGE} AS runtime

ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="agent-fabric" \
      org.opencontainers.image.description="Runs AI-agent tasks from CloudEvents over HTTP and NATS JetStream" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${GIT_SHA}"

# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it (the pods run as 10001 too).
RUN groupadd --system --gid 10001 fabric \
 && useradd --system --uid 10001 --gid fabric --home-dir /app --no-create-home \
            --shell /usr/sbin/nologin fabric \
 && mkdir -p /app /var/lib/agent-fabric \
 && chown fabric:fabric /var/lib/agent-fabric

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
# scripts/ for the init container's scripts/ci/run-migrations.sh (the Alembic migrations ship
# inside the package). Owned by root and read-only for the service user.
COPY scripts ./scripts

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AGENT_FABRIC_STATE_DIR=/var/lib/agent-fabric \
    AGENT_FABRIC_HTTP_PORT=8080

USER 10001:10001
EXPOSE 8080

# python:3.11-slim has no curl or wget; probe /health with the standard library instead.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["agent-fabric"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
