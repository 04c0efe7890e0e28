# Convoy's image: the `convoy` command and everything it runs (API, planner, relay, ingest,
# agents). compose.yaml builds it; deploy/kubernetes/agent.yaml runs it as the same
# non-root user (uid 10001).
#
#   docker build -t convoy .
#   docker run --rm convoy --help
#
# The pinned wheels also carry nats-server and PostgreSQL (the embedded default), so
# `docker run convoy up` works with nothing else; with CONVOY_DATABASE_URL and
# CONVOY_NATS_URL set, Convoy uses those servers and starts neither.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY cli ./cli
COPY eventstore ./eventstore
COPY schemas ./schemas
COPY services ./services
RUN pip install . && rm -rf /src

# Example config, so `docker compose exec controlplane convoy apply -f /opt/convoy/examples/shop` works.
COPY examples /opt/convoy/examples

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/convoy --create-home --shell /usr/sbin/nologin convoy
USER 10001:10001
ENV HOME=/var/lib/convoy \
    CONVOY_STATE_DIR=/var/lib/convoy
WORKDIR /var/lib/convoy
VOLUME ["/var/lib/convoy"]

ENTRYPOINT ["convoy"]
CMD ["--help"]
