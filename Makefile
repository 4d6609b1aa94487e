# One virtual environment, made from the versions pinned in pyproject.toml.
PYTHON ?= python3.11
# Models `make serve` builds and serves; MODELS=all for the five variants.
MODELS ?= se_resnet50,eca_resnet50
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# What `make serve` needs (the gateway and a worker), installed alone when .venv is new: half
# the time of everything (`make setup`), which the tests and benchmarks add to the same .venv.
SERVE_STAMP := $(VENV)/.installed-serve
PIP_INSTALL := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: setup system-deps test lint bench bench-all archives serve loadtest mutate clean \
	wheelhouse base-image images

setup: $(STAMP)

# torch comes first, by exact version, so pip takes the CPU build from local disk
# instead of resolving a multi-GB CUDA build for a range.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e ".[dev]"
	touch $(SERVE_STAMP) $(STAMP)

$(SERVE_STAMP): pyproject.toml
	@echo "installing what make serve needs (.[gateway,worker]; make setup adds the rest)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e ".[gateway,worker]"
	touch $(SERVE_STAMP)

# What the tests run besides Python: Java 17+ for TorchServe's frontend, Debian's prometheus
# package (promtool and a real Prometheus server), and a Docker engine with docker-compose and
# debootstrap for the container tests. CI runs as root with apt: installed if missing.
system-deps:
	@command -v java >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 \
		&& command -v dockerd >/dev/null 2>&1 && command -v docker-compose >/dev/null 2>&1 \
		&& command -v debootstrap >/dev/null 2>&1 || { \
		echo "installing openjdk-17-jre-headless (TorchServe), prometheus (promtool, server)," \
			"docker.io, docker-compose and debootstrap (container tests) with apt"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			openjdk-17-jre-headless prometheus docker.io docker-compose debootstrap; }

test: setup system-deps
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# One .mar per model, built side by side (a process each); a no-op when the inputs have not
# changed.
archives: $(SERVE_STAMP)
	$(PY) -m model_store build --models $(MODELS)

# Gateway on 127.0.0.1:8000 in front of TorchServe on 8080/8081/8082, foreground; Ctrl-C stops
# both. Without Java the gateway says so and runs the same archives in-process.
serve: archives
	GATEWAY_MODELS=$(MODELS) $(PY) -m service --start-torchserve --port 8000

bench: setup
	$(PY) -m bench.models

# Locust, headless: SE vs ECA in interleaved trials (closed and open loop) against a stack it
# starts itself, ~10 min; writes loadtests/reports/<timestamp>/report.md with verdicts, their
# intervals and plots. LOADTEST_ARGS to change it, e.g. the full sweep:
#   make loadtest LOADTEST_ARGS="--start-stack --profile thorough"
LOADTEST_ARGS ?= --start-stack --models se_resnet50,eca_resnet50
loadtest: setup system-deps
	$(PY) -m loadtests.compare $(LOADTEST_ARGS)

# The serving benchmarks too: TorchServe direct, gateway vs TorchServe vs in-process, the
# worker's memory ceiling, what the reduced-scale JPEG decode saves and changes, and a 30-minute
# soak with faults (bench/soak.py); and what bf16/int8 do to the answers (bench/precision.py).
bench-all: bench system-deps
	$(PY) -m bench.torchserve_direct
	$(PY) -m bench.gateway
	$(PY) -m bench.capacity
	$(PY) -m bench.scaleout
	$(PY) -m bench.memory
	$(PY) -m bench.decode
	$(PY) -m bench.precision
	$(PY) -m bench.soak

# Mutation testing of the hot paths against the fast unit tests ([tool.mutmut] in
# pyproject.toml): the killed share, then every surviving mutant (`mutmut show NAME`).
mutate: setup
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children 2
	$(VENV)/bin/mutmut export-cicd-stats
	$(PY) -c 'import json; s = json.load(open("mutants/mutmut-cicd-stats.json")); \
		k = s["killed"] + s["timeout"]; n = s["total"] - s["skipped"]; \
		print(f"killed {k} of {n} mutants: {k / n:.1%} (timeouts count as killed)")'
	$(VENV)/bin/mutmut results

# Wheels for the images, made here with pip (this machine's CPU build of torch; elsewhere add
# WHEELHOUSE_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"). The images
# install from it alone (--no-index).
WHEELHOUSE_PIP_ARGS ?=
wheelhouse: setup
	rm -rf wheelhouse
	@echo "wheelhouse: wheels for .[gateway,worker,openvino,loadtest] (torch is ~200 MB) ..."
	$(PY) -m pip wheel --quiet --disable-pip-version-check --wheel-dir wheelhouse \
		$(WHEELHOUSE_PIP_ARGS) ".[gateway,worker,openvino,loadtest]" pip
	mkdir -p wheelhouse/bootstrap && cp wheelhouse/pip-*.whl wheelhouse/bootstrap/pip.whl
	rm -rf build  # setuptools' leftovers from building our own wheel
	@du -sh wheelhouse

# A base image for machines with no container registry (debootstrap + docker import, as root):
#   make base-image && BASE_IMAGE=attention-serving/python:3.11-bookworm make images
base-image:
	deploy/docker/base-image.sh attention-serving/python:3.11-bookworm

# The gateway and worker images (docker-compose.yml's build sections), from the wheelhouse.
images: wheelhouse
	GRAFANA_ADMIN_PASSWORD=$${GRAFANA_ADMIN_PASSWORD:-not-needed-to-build} \
		DOCKER_BUILDKIT=0 docker-compose build gateway torchserve

clean:
	rm -rf $(VENV) .pytest_cache .run model_store/archives mutants wheelhouse
