# Runtime image for md-feeder, md-sim and md: slim, non-root, no test dependencies.
FROM python:3.11-slim AS build
# a C compiler for the feeder's one extension (feeder/exchanges/_units.c); the runtime image needs none
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY client ./client
COPY feeder ./feeder
COPY exchange_sim ./exchange_sim
COPY md_cli ./md_cli
RUN pip install --no-cache-dir --prefix=/install ".[fast]"

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 md
COPY --from=build /install /usr/local
USER md
WORKDIR /home/md
ENV PYTHONUNBUFFERED=1
# Metrics and health on :9108 (/metrics for Prometheus, /healthz for the check below); unset MD_METRICS_PORT
# to turn them off. The check passes while the feeder's Redis writes succeed and no connection has been down
# longer than MD_HEALTH_GRACE; containers running md-sim or md should disable it (compose.yaml does).
ENV MD_METRICS_PORT=9108 MD_METRICS_HOST=0.0.0.0
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["md-feeder", "--healthcheck"]
# A feeder exits 0 on SIGTERM after flushing and marking itself offline.
STOPSIGNAL SIGTERM
CMD ["md-feeder"]
