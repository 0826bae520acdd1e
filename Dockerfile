# syntax=docker/dockerfile:1
# secstream image: every stage runs from it (`secstream collect|stream|sink|topics|replay ...`).
#   docker build -t secstream:0.1.0 .
# Release builds pin the base by digest: --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest>
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: resolve the pinned dependencies into a virtual environment --------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# A C compiler for the optional accelerators (schemas/_avrocodec.c, producers/_evtxrender.c, streams/_normalize.c);
# without it the install still succeeds but the codec, the EVTX mapping and the normaliser run their pure-Python
# paths, several times slower.
# Not pinned: Debian's security updates replace exact versions, and the compiler never reaches the runtime image.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install --yes --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/secstream
# Dependencies first, so a source change does not reinstall them.
COPY pyproject.toml constraints.txt README.md ./
COPY secstream/ secstream/
COPY schemas/ schemas/
COPY producers/ producers/
COPY streams/ streams/
COPY sinks/ sinks/
COPY workspace/ workspace/
# The import check fails the build when an extension did not compile (the install itself would go on without it).
RUN /opt/secstream/bin/pip install -c constraints.txt . \
 && /opt/secstream/bin/python -I -c "import schemas._avrocodec, producers._evtxrender, streams._normalize, workspace._bulkinsert"

# --- runtime: the virtual environment only, as an unprivileged user ------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="secstream" \
      org.opencontainers.image.description="Windows security events through Kafka into Microsoft Sentinel" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/secstream/secstream"
# The uid/gid match the Helm chart's securityContext (runAsUser 10001).
RUN groupadd --system --gid 10001 secstream \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/secstream --no-create-home \
            --shell /usr/sbin/nologin secstream \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/secstream \
 && install -d -m 0755 /etc/secstream
COPY --from=build /opt/secstream /opt/secstream
ENV PATH=/opt/secstream/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Relative state paths (.state/...) land in the working directory: a volume in Kubernetes (read-only root).
WORKDIR /var/lib/secstream
USER 10001:10001
# collector HTTPS, health (/healthz, /readyz), Prometheus metrics
EXPOSE 8443 8080 9464
# No HEALTHCHECK: Kubernetes ignores it and probes /healthz and /readyz on telemetry.health_port instead, which is
# off (0) unless configured, so an image-level check would fail every plain `docker run`.
HEALTHCHECK NONE
ENTRYPOINT ["secstream"]
CMD ["--help"]
