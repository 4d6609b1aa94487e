# Prometheus from Debian's package, for `docker compose` where prom/prometheus cannot be pulled:
#   docker build -f deploy/docker/prometheus.Dockerfile -t attention-serving/prometheus .
#   PROMETHEUS_IMAGE=attention-serving/prometheus docker compose up
ARG BASE_IMAGE=python:3.11.7-slim-bookworm
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends prometheus wget \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus && chown prometheus /prometheus
USER prometheus
WORKDIR /prometheus
EXPOSE 9090
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD wget -q -O- http://127.0.0.1:9090/-/ready
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
