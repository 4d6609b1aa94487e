# The load generator: Locust with our users (`loadtests/locustfile.py`), for Locust's distributed
# mode in a cluster (deploy/k8s/loadtest: one master Job and Service, a Job of workers). Built
# like the other images from the host's wheelhouse (`make wheelhouse`), no network at build time.
ARG BASE_IMAGE=python:3.11.7-slim-bookworm

FROM ${BASE_IMAGE} AS build
COPY wheelhouse /wheels
RUN python -m venv --without-pip /opt/venv \
 && /opt/venv/bin/python /wheels/bootstrap/pip.whl/pip install --no-cache-dir --no-index \
      --find-links /wheels "attention-serving[loadtest]"

FROM ${BASE_IMAGE}
RUN useradd --system --uid 10001 --create-home app
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER app
WORKDIR /home/app
# the users, as installed with the package (BASE_IMAGE's python is 3.11)
ENTRYPOINT ["locust", "-f", "/opt/venv/lib/python3.11/site-packages/loadtests/locustfile.py"]
CMD ["--help"]
