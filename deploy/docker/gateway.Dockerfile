# The FastAPI gateway: `.[gateway]`, no torch (model sizes and runtimes come from the workers).
# Python packages come from the wheelhouse made on the host (`make wheelhouse`), never from the
# network at build time. BASE_IMAGE: any Debian-like image whose `python` is 3.11; the official
# one by default, or the one `make base-image` builds with debootstrap where no registry answers.
ARG BASE_IMAGE=python:3.11.7-slim-bookworm

FROM ${BASE_IMAGE} AS build
COPY wheelhouse /wheels
RUN python -m venv --without-pip /opt/venv \
 && /opt/venv/bin/python /wheels/bootstrap/pip.whl/pip install --no-cache-dir --no-index \
      --find-links /wheels "attention-serving[gateway]"

FROM ${BASE_IMAGE}
RUN useradd --system --uid 10001 --create-home app
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER app
WORKDIR /home/app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8000"]
