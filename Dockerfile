# syntax=docker/dockerfile:1
#
# skor-bridge, as a drop-in for Skor's image. Build: docker build -t skor-bridge .
# Run it as Skor was run, with DBNAME, PGUSER, PGPASS, PGHOST, PGPORT and WEBHOOKURL:
#   docker run -e DBNAME=postgres -e PGUSER=postgres -e PGPASS="''" -e PGHOST=db \
#              -e PGPORT=5432 -e WEBHOOKURL=http://hooks:5000/ skor-bridge
# or with SKOR_* variables (SKOR_DSN, SKOR_WEBHOOK, SKOR_AMQP, SKOR_KAFKA, SKOR_CONFIG...);
# any other command works too: docker run skor-bridge triggers install /config/triggers.json

# -- builder: the source becomes one wheel -----------------------------------------------------
FROM python:3.11-slim AS builder
WORKDIR /src
# .dockerignore lets in only pyproject.toml, README.md and skor_bridge/.
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# -- runtime: that wheel and its runtime dependencies; no demo or test extras -----------------
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=builder /dist/ /tmp/dist/
RUN pip install --no-cache-dir /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin skor
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001

# /metrics, /healthz and /readyz; the HEALTHCHECK below and Kubernetes' probes use them.
# Every interface: inside a container, probes and scrapers come from outside it.
ENV SKOR_METRICS_PORT=9187 SKOR_METRICS_HOST=0.0.0.0
EXPOSE 9187
# The slim image has no curl; Python's urllib fails (exit 1) on a refused connection or 503.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SKOR_METRICS_PORT', '9187'), timeout=3)"]

ENTRYPOINT ["skor-bridge"]
CMD ["run"]
