# A TorchServe worker with the model archives built in. CPU by default;
#   docker build --build-arg VARIANT=cuda ...   for the CUDA build of torch.
# MODELS picks the archives; CHECKPOINTS (MODEL=PATH,...) packages real weights from the build
# context, otherwise the archives hold seeded random weights marked UNTRAINED.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
ARG MODELS=se_resnet50,eca_resnet50
# RUNTIME: inductor (AOTInductor), openvino, or auto (both measured at build, the faster kept:
# build on the machine class that serves).
ARG RUNTIME=inductor

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ARG MODELS
ARG RUNTIME
ARG CHECKPOINTS=""
WORKDIR /src
# A C++ compiler for the archives' ahead-of-time compilation (AOTInductor), in this stage only:
# the served image loads the compiled packages and needs none.
RUN apt-get update && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml ./
COPY model_store ./model_store
COPY service ./service
RUN if [ "$VARIANT" = "cuda" ]; then INDEX=https://download.pytorch.org/whl/cu128; \
    else INDEX=https://download.pytorch.org/whl/cpu; fi \
 && pip install --no-cache-dir torch==2.13.0 --index-url "$INDEX" \
 && pip install --no-cache-dir ".[openvino]"
RUN set -e; ARGS=""; for c in $(echo "$CHECKPOINTS" | tr ',' ' '); do ARGS="$ARGS --checkpoint $c"; done; \
    python -m model_store build --models "$MODELS" --runtime "$RUNTIME" --out /archives $ARGS

FROM ${PYTHON_IMAGE}
ARG MODELS
# TorchServe's frontend is Java 17; tini is PID 1 (reaps zombies, forwards SIGTERM).
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home torchserve
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=torchserve /archives /home/torchserve/archives
COPY deploy/docker/torchserve.properties /home/torchserve/config.properties
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER torchserve
WORKDIR /home/torchserve
EXPOSE 8080 8081 8082
HEALTHCHECK --interval=15s --timeout=3s --start-period=600s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/ping', timeout=2)"
# MODELS at run time: which archives to load (the built ones by default). The launcher, not
# TorchServe's own, is the main process: TorchServe's frontend resets in-flight requests on
# SIGTERM, so on a stop the launcher lets running batches finish for DRAIN_SECONDS, then stops
# the frontend and its workers together (keep DRAIN_SECONDS below the stop grace period).
ENV MODELS=${MODELS} DRAIN_SECONDS=10
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["sh", "-c", "exec python -m model_store serve --host 0.0.0.0 --archives archives --config config.properties --run-dir run --models \"$MODELS\" --drain-seconds \"$DRAIN_SECONDS\""]
