# A TorchServe worker with the model archives built in: `.[worker,openvino]` from the wheelhouse
# made on the host (`make wheelhouse`: the CPU build of torch unless told otherwise, see the
# README), never from the network at build time. BASE_IMAGE as in gateway.Dockerfile.
# MODELS picks the archives; CHECKPOINTS (MODEL=PATH,... with PATHs under /checkpoints, copied
# from deploy/docker/checkpoints/) packages real weights, otherwise the archives hold seeded
# random weights marked UNTRAINED. RUNTIME: inductor (AOTInductor), openvino, or auto (both
# measured at build, the faster kept: build on the machine class that serves). PRECISION: fp32,
# bf16, int8 or auto (low precisions built only if they pass the fidelity gate; see README).
ARG BASE_IMAGE=python:3.11.7-slim-bookworm
ARG MODELS=se_resnet50,eca_resnet50
ARG RUNTIME=inductor
ARG PRECISION=fp32

FROM ${BASE_IMAGE} AS build
ARG MODELS
ARG RUNTIME
ARG PRECISION
ARG CHECKPOINTS=""
# A C++ compiler for the archives' ahead-of-time compilation (AOTInductor), in this stage only:
# the served image loads the compiled packages and needs none. What is compiled here is tied
# neither to this host's thread count (the weights are packed for the pod's CPUs when a worker
# loads them) nor, in float32, to its CPU (x86-64-v3 code: any AVX2 machine serves it).
RUN apt-get update && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/*
COPY wheelhouse /wheels
RUN python -m venv --without-pip /opt/venv \
 && /opt/venv/bin/python /wheels/bootstrap/pip.whl/pip install --no-cache-dir --no-index \
      --find-links /wheels "attention-serving[worker,openvino]"
ENV PATH=/opt/venv/bin:$PATH
COPY deploy/docker/checkpoints /checkpoints
RUN set -e; ARGS=""; for c in $(echo "$CHECKPOINTS" | tr ',' ' '); do ARGS="$ARGS --checkpoint $c"; done; \
    python -m model_store build --models "$MODELS" --runtime "$RUNTIME" --precision "$PRECISION" \
      --out /archives $ARGS

FROM ${BASE_IMAGE}
ARG MODELS
# TorchServe's frontend is Java 17; tini is PID 1 (reaps zombies, forwards SIGTERM).
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home torchserve \
 && install -d -o torchserve /home/torchserve/run
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=torchserve /archives /home/torchserve/archives
COPY deploy/docker/torchserve.properties /home/torchserve/config.properties
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER torchserve
WORKDIR /home/torchserve
# the run directory (config, logs, compile cache) and /tmp are all it writes: the root
# filesystem may be read-only (compose and Kubernetes mount writable space on these two)
EXPOSE 8080 8081 8082
HEALTHCHECK --interval=15s --timeout=3s --start-period=600s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/ping', timeout=2)"
# MODELS at run time: which archives to load (the built ones by default). The launcher, not
# TorchServe's own, is the main process: TorchServe's frontend resets in-flight requests on
# SIGTERM, so on a stop the launcher waits until nothing is in flight (DRAIN_SECONDS at most),
# then stops the frontend and its workers together (keep DRAIN_SECONDS below the stop grace period).
ENV MODELS=${MODELS} DRAIN_SECONDS=10
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["sh", "-c", "exec python -m model_store serve --host 0.0.0.0 --archives archives --config config.properties --run-dir run --models \"$MODELS\" --drain-seconds \"$DRAIN_SECONDS\""]
