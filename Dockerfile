# syntax=docker/dockerfile:1
# The CoinPulse collector image: `coinpulse` is the entrypoint, `run` the default command.
#   docker build -t coinpulse-collector:0.1.0 .
#   docker run --rm coinpulse-collector:0.1.0 --version
# Stage 1 builds the project into a virtualenv; stage 2 is the same slim Python with only that virtualenv,
# running as an unprivileged user. No compiler is needed (psycopg ships binary wheels) and no secret is
# ever part of the build: the database URL and the CoinCap key come from the environment at run time.

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/coinpulse
COPY pyproject.toml README.md ./
COPY collector ./collector
COPY migrations ./migrations
COPY continuous_aggregates ./continuous_aggregates
RUN /opt/coinpulse/bin/pip install --no-cache-dir . \
    && /opt/coinpulse/bin/coinpulse --version

FROM python:3.11.14-slim-bookworm
LABEL org.opencontainers.image.title="coinpulse-collector" \
      org.opencontainers.image.description="CoinCap v3 -> TimescaleDB collector (CoinPulse)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 coinpulse \
    && useradd --system --uid 10001 --gid coinpulse --home-dir /var/lib/coinpulse --no-create-home \
       --shell /usr/sbin/nologin coinpulse \
    && mkdir -p /var/lib/coinpulse/spool \
    && chown -R coinpulse:coinpulse /var/lib/coinpulse
COPY --from=build /opt/coinpulse /opt/coinpulse
ENV PATH=/opt/coinpulse/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    COINPULSE_METRICS_HOST=0.0.0.0 \
    COINPULSE_METRICS_PORT=9108 \
    COINPULSE_SPOOL_DIR=/var/lib/coinpulse/spool
WORKDIR /var/lib/coinpulse
USER 10001:10001
EXPOSE 9108
# No curl in a slim image: ask /healthz with the Python that is there (a 503 raises, so the check fails).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('COINPULSE_METRICS_PORT', '9108') + '/healthz', timeout=4)"]
ENTRYPOINT ["coinpulse"]
CMD ["run"]
