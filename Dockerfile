# linehost line host (and dashboard) image. Build: docker build -t linehost .
# Run: see deploy/compose.yaml. Serial jigs are passed in with --device / devices:.
# BASE: any Debian bookworm with python3 (3.11) and its venv module. Where no registry is
# reachable, deploy/image/build-and-smoke.sh makes one with debootstrap (docs/deployment.md).
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
WORKDIR /src
RUN python3 -m venv /opt/venv
COPY pyproject.toml README.md ./
# The dependencies' wheels first, from pyproject.toml alone: a layer that outlives code changes.
RUN mkdir linehost && touch linehost/__init__.py \
    && /opt/venv/bin/pip wheel --no-cache-dir --wheel-dir /wheels . \
    && rm -rf linehost build linehost.egg-info /wheels/linehost-*.whl
COPY linehost ./linehost
COPY migrations ./migrations
RUN /opt/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${BASE}
LABEL org.opencontainers.image.title="linehost" \
      org.opencontainers.image.description="Matter DAC provisioning line host" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
COPY --from=build /wheels /wheels
COPY migrations /opt/linehost/migrations
ENV LINEHOST_MIGRATIONS=/opt/linehost/migrations
# A virtualenv: the same on python:3.11-slim and on Debian's own python3 (PEP 668).
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    # dialout: the group that owns /dev/ttyUSB* and /dev/ttyACM* on the host
    && useradd --system --uid 10001 --gid dialout --home-dir /var/lib/linehost \
       --create-home --shell /usr/sbin/nologin linehost
WORKDIR /var/lib/linehost
# numeric, so Kubernetes' runAsNonRoot can check it; gid 20 = dialout in Debian
USER 10001:20
# The station config is mounted here (deploy/compose.yaml).
VOLUME ["/etc/linehost"]
EXPOSE 8080
# The image's own check: the console script starts. compose.yaml adds the dashboard's /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["linehost", "--version"]
ENTRYPOINT ["linehost"]
CMD ["run", "--config", "/etc/linehost/line.toml"]
