# A TorchServe worker with the model archives built in. CPU by default;
#   docker build --build-arg VARIANT=cuda ...   for the CUDA build of torch.
# MODELS picks the archives; CHECKPOINTS (MODEL=PATH,...) packages real weights from the build
# context, otherwise the archives hold seeded random weights marked UNTRAINED.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ARG MODELS=se_resnet50,eca_resnet50
ARG CHECKPOINTS=""
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml ./
COPY model_store ./model_store
COPY service ./service
RUN if [ "$VARIANT" = "cuda" ]; then INDEX=https://download.pytorch.org/whl/cu128; \
    else INDEX=https://download.pytorch.org/whl/cpu; fi \
 && pip install --no-cache-dir torch==2.13.0 --index-url "$INDEX" \
 && pip install --no-cache-dir .
RUN set -e; ARGS=""; for c in $(echo "$CHECKPOINTS" | tr ',' ' '); do ARGS="$ARGS --checkpoint $c"; done; \
    python -m model_store build --models "$MODELS" --out /archives $ARGS

FROM ${PYTHON_IMAGE}
# TorchServe's frontend is Java 17.
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
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
# MODELS at run time: which archives to load (all built ones by default).
ENV MODELS=all
CMD ["sh", "-c", "exec torchserve --start --foreground --ncs --model-store archives --ts-config config.properties --models $MODELS"]
