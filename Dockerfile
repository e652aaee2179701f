# linehost line host (and dashboard) image. Build: docker build -t linehost .
# Run: see deploy/compose.yaml. Serial jigs are passed in with --device / devices:.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY linehost ./linehost
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="linehost" \
      org.opencontainers.image.description="Matter DAC provisioning line host" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
COPY migrations /opt/linehost/migrations
ENV LINEHOST_MIGRATIONS=/opt/linehost/migrations
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
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
