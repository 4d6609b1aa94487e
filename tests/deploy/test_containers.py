"""The containers for real: the images built with no registry (a debootstrap base, the host's
wheelhouse), the compose stack up on a real Docker engine, real images classified through the
published port, Prometheus scraping both, a crashed worker restarted by compose, a stop under
load drained, and nothing left behind.

``make test`` installs docker.io, docker-compose and debootstrap; when no engine answers, the
tests start ``dockerd`` with its own data root in the user's cache, one per CPU class
(``~/.cache/attention-serving/docker-x86_64-avx2``...: the base image and the layers stay
cached between runs and clones; what a run leaves dangling is pruned) and stop it afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from model_store.demo.tiny import save_tiny
from model_store.torchserve.host import free_ports
from model_store.worker.archive_cache import user_cache_dir
from model_store.zoo.aot import cpu_class

from ..service.test_gateway_torchserve import labelled_images, metric, send_all, top1
from .test_prometheus import query, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROJECT = "attention-serving-test"
BASE_IMAGE = "attention-serving/python:3.11-bookworm"
PROMETHEUS_IMAGE = "attention-serving/prometheus"
GRAFANA_IMAGE = "grafana/grafana:11.2.0"
MODELS = ("se_resnet50", "eca_resnet50")
CHECKPOINTS = REPO / "deploy" / "docker" / "checkpoints"
GATEWAY_IMAGE_LIMIT_MB = 300


def run(command: list[str], env: dict[str, str], timeout: float = 1800) -> str:
    """A command whose output the test log shows as it goes (image builds take minutes)."""
    print(f"$ {' '.join(command)}", flush=True)
    done = subprocess.run(
        command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=timeout,
    )  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"{command} failed ({done.returncode}):\n{done.stdout[-4000:]}")
    return done.stdout


def engine_answers(env: dict[str, str]) -> bool:
    return subprocess.run(["docker", "info"], env=env, capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def docker() -> Iterator[dict[str, str]]:
    """The environment for docker commands: an engine that answers, started here if needed."""
    for tool in ("docker", "docker-compose", "dockerd", "debootstrap"):
        assert shutil.which(tool), f"{tool} missing: `make test` installs it with apt"
    env = os.environ | {"DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0"}
    if engine_answers(env):
        yield env
        return
    root = user_cache_dir() / f"docker-{cpu_class()}"
    root.mkdir(parents=True, exist_ok=True)
    runtime = Path(tempfile.mkdtemp(prefix="dk-"))  # short: containerd's socket paths
    env["DOCKER_HOST"] = f"unix://{runtime / 'docker.sock'}"
    with (root / "dockerd.log").open("ab") as log:
        daemon = subprocess.Popen(
            ["dockerd", "--data-root", str(root / "data"), "--exec-root", str(runtime / "exec"),
             "--pidfile", str(runtime / "docker.pid"), "-H", env["DOCKER_HOST"]],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(lambda: engine_answers(env), "dockerd to answer", timeout=60)
        yield env
    finally:
        daemon.terminate()
        daemon.wait(60)
        shutil.rmtree(runtime, ignore_errors=True)


def image_exists(env: dict[str, str], image: str) -> bool:
    inspected = subprocess.run(["docker", "image", "inspect", image], env=env, capture_output=True)
    return inspected.returncode == 0


@dataclass
class Stack:
    env: dict[str, str]
    url: str
    prometheus_url: str

    def compose(self, *args: str, timeout: float = 600) -> str:
        return run(["docker-compose", "-p", PROJECT, *args], self.env, timeout)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).strip()

    def inspect(self, service: str) -> dict:
        output = run(["docker", "inspect", self.container(service)], self.env)
        return json.loads(output)[0]


@pytest.fixture(scope="module")
def stack(docker, tiny_trained) -> Iterator[Stack]:
    gateway_port, prometheus_port = free_ports(2)
    env = docker | {
        "BASE_IMAGE": BASE_IMAGE,
        "PROMETHEUS_IMAGE": PROMETHEUS_IMAGE,
        "GRAFANA_ADMIN_PASSWORD": "only-for-the-container-test",
        "GATEWAY_PORT": str(gateway_port),
        "PROMETHEUS_PORT": str(prometheus_port),
        "CHECKPOINTS": ",".join(f"{m}=/checkpoints/{m}.pt" for m in MODELS),
    }
    if not image_exists(env, BASE_IMAGE):
        run([str(REPO / "deploy" / "docker" / "base-image.sh"), BASE_IMAGE], env)
    run(["make", "wheelhouse"], env)
    for model in MODELS:  # tiny trained weights: real answers, archives built in a minute
        save_tiny(tiny_trained(model), CHECKPOINTS / f"{model}.pt")
    run(["docker", "build", "-f", "deploy/docker/prometheus.Dockerfile",
         "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", PROMETHEUS_IMAGE, "."], env)  # fmt: skip
    stack = Stack(env, f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{prometheus_port}")
    services = ["torchserve", "gateway", "prometheus"]
    if image_exists(env, GRAFANA_IMAGE):
        services.append("grafana")
    else:
        print(f"{GRAFANA_IMAGE} is not available locally (no registry): Grafana not started")
    try:
        stack.compose("build", "gateway", "torchserve", timeout=1800)
        stack.compose("up", "-d", "--no-build", *services)
        wait_for(lambda: every_model_ready(stack), "the gateway ready with its workers", 600)
        yield stack
    finally:
        subprocess.run(
            ["docker-compose", "-p", PROJECT, "down", "-v", "--remove-orphans"],
            env=env, cwd=REPO, capture_output=True,
        )  # fmt: skip
        for model in MODELS:
            (CHECKPOINTS / f"{model}.pt").unlink(missing_ok=True)
        # the images this run replaced: the cache keeps what the next build reuses, no more
        subprocess.run(["docker", "image", "prune", "-f"], env=env, capture_output=True)


def test_the_gateway_image_has_no_torch_and_the_worker_no_compiler(stack):
    env = stack.env
    gateway = stack.inspect("gateway")["Config"]["Image"]
    worker = stack.inspect("torchserve")["Config"]["Image"]
    probe = "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('numpy'))"
    output = run(["docker", "run", "--rm", gateway, "python", "-c", probe], env)
    assert output.split() == ["None", "None"]
    size_mb = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", gateway], env)) / 1e6
    print(f"gateway image {size_mb:.0f} MB")
    assert size_mb < GATEWAY_IMAGE_LIMIT_MB
    compilers = "command -v g++ gcc cc c++ || echo none"
    output = run(["docker", "run", "--rm", "--entrypoint", "sh", worker, "-c", compilers], env)
    assert output.strip() == "none"


def test_real_images_are_classified_by_the_configured_fast_path(stack):
    """Through the published port; the workers serve the AOTInductor packages they were built
    with (no compiler in the image: anything else would be a silent fallback)."""
    images, labels = labelled_images(12, seed=31)
    for model in MODELS:
        responses = asyncio.run(send_all(stack.url, model, images, concurrency=4))
        assert [r.status_code for r in responses] == [200] * len(images)
        assert [top1(r) for r in responses] == labels
    listed = httpx.get(f"{stack.url}/v1/models", timeout=10).json()["models"]
    assert {m["name"]: m["runtime"] for m in listed} == dict.fromkeys(MODELS, "aot")
    assert all(m["status"] == "ready" and m["parameters"] > 0 for m in listed)


def test_the_gateway_image_speaks_the_open_inference_protocol(stack):
    """Triton's client against the container (a gateway without numpy): binary images in,
    the classification extension out, the same labels as /v1."""
    images, labels = labelled_images(4, seed=33)
    tensor = triton.InferInput("images", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    best = triton.InferRequestedOutput("probabilities", class_count=1)
    with triton.InferenceServerClient(stack.url.removeprefix("http://")) as client:
        assert client.is_server_ready() and client.is_model_ready("eca_resnet50")
        answer = client.infer("eca_resnet50", [tensor], outputs=[best]).as_numpy("probabilities")
    assert [row[0].decode().split(":", 2)[2] for row in answer] == labels


NEIGHBOUR_CALLS = """
import httpx
fetch = "http://127.0.0.1:9999"
calls = [
    ("POST", "/workflows", {"url": f"{fetch}/x.war"}),
    ("POST", "/models", {"url": f"{fetch}/y.mar", "initial_workers": "1"}),
    ("PUT", "/models/eca_resnet50", {"min_worker": "0", "max_worker": "0"}),
    ("POST", "/token", {"type": "inference"}),
]
gate = "http://torchserve:8081"
for method, path, params in calls:
    print(method, path, httpx.request(method, f"{gate}{path}", params=params).status_code)
print("GET /models/eca_resnet50", httpx.get(f"{gate}/models/eca_resnet50").status_code)
"""
PROBE_FETCHES = """
import time, urllib.error, urllib.request
for _ in range(50):
    try:
        urllib.request.urlopen("http://127.0.0.1:9999/probe")
    except urllib.error.HTTPError:
        break  # its 404: the server answers
    except OSError:
        time.sleep(0.2)
"""


def test_a_neighbour_cannot_use_the_workers_management_api(stack):
    """From the gateway's container (a neighbour on the backend network): TorchServe's workflow,
    registration, scaling and key calls are refused by the worker's read-only management gate,
    and a server inside the worker container, which TorchServe could reach, is asked nothing."""
    worker = stack.container("torchserve")
    serve_fetches = "cd /tmp && exec python -m http.server 9999 --bind 127.0.0.1 2> fetches.log"
    run(["docker", "exec", "-d", worker, "sh", "-c", serve_fetches], stack.env)
    run(["docker", "exec", worker, "python", "-c", PROBE_FETCHES], stack.env)
    answers = run(
        ["docker", "exec", stack.container("gateway"), "python", "-c", NEIGHBOUR_CALLS], stack.env
    )
    assert answers.split("\n")[:5] == [
        "POST /workflows 403", "POST /models 403", "PUT /models/eca_resnet50 403",
        "POST /token 403", "GET /models/eca_resnet50 200",
    ], answers  # fmt: skip
    time.sleep(2)
    fetched = run(["docker", "exec", worker, "cat", "/tmp/fetches.log"], stack.env)
    assert "GET /probe" in fetched and "GET /x.war" not in fetched and "/y.mar" not in fetched
    for service in ("torchserve", "gateway"):
        host = stack.inspect(service)["HostConfig"]
        assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"], service


def test_prometheus_scrapes_both_targets_and_counts_what_was_sent(stack):
    def counted() -> float | None:
        return query(stack.prometheus_url, 'sum(gateway_requests_total{code="200"})')

    wait_for(lambda: counted() is not None, "the gateway's first scrape", timeout=60)
    before = counted()
    images, _ = labelled_images(7, seed=32)
    asyncio.run(send_all(stack.url, "se_resnet50", images, concurrency=3))
    wait_for(lambda: counted() == before + len(images), "Prometheus to count 7 more", 60)
    for job in ("gateway", "torchserve"):
        assert query(stack.prometheus_url, f'up{{job="{job}"}}') == 1.0, job


def test_the_load_generator_image_loads_the_stack(stack):
    """deploy/docker/loadtest.Dockerfile, the image of the Kubernetes Locust Jobs: headless
    Locust from the container, open loop, against the published gateway; the gateway counts
    what Locust sent."""
    image = "attention-serving/loadtest:test"
    run(["docker", "build", "-f", "deploy/docker/loadtest.Dockerfile",
         "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", image, "."], stack.env)  # fmt: skip
    before = metric(
        stack.url, "gateway_requests_total", model="se_resnet50", protocol="v1", code="200"
    )
    locust = ["--headless", "--host", stack.url, "--model", "se_resnet50", "--user-rate", "1",
              "-u", "4", "-r", "4", "-t", "6s", "--stop-timeout", "30"]  # fmt: skip
    locust.append("--only-summary")
    output = run(["docker", "run", "--rm", "--network", "host", image, *locust], stack.env)
    sent = metric(
        stack.url, "gateway_requests_total", model="se_resnet50", protocol="v1", code="200"
    )
    assert sent - before > 0, output
    assert "classify se_resnet50" in output and "ARRIVAL" in output


def test_a_crashed_worker_is_restarted_and_the_gateway_recovers_by_itself(stack):
    gateway_before = stack.inspect("gateway")
    kill_java = (
        "import os, signal\n"
        "for p in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        if b'org.pytorch.serve.ModelServer' in open(f'/proc/{p}/cmdline', 'rb').read():\n"
        "            os.kill(int(p), signal.SIGKILL)\n"
        "    except OSError:\n"
        "        pass\n"
    )
    # the exec dies with its container (137): its exit status says nothing
    subprocess.run(
        ["docker", "exec", stack.container("torchserve"), "python", "-c", kill_java],
        env=stack.env, capture_output=True, timeout=60,
    )  # fmt: skip
    wait_for(lambda: stack.inspect("torchserve")["RestartCount"] >= 1, "compose's restart", 120)
    wait_for(lambda: every_model_ready(stack), "the gateway ready again", timeout=300)
    images, labels = labelled_images(4, seed=33)
    responses = asyncio.run(send_all(stack.url, "eca_resnet50", images, concurrency=2))
    assert [top1(r) for r in responses] == labels
    gateway_after = stack.inspect("gateway")
    assert gateway_after["RestartCount"] == 0
    assert gateway_after["State"]["StartedAt"] == gateway_before["State"]["StartedAt"]


def test_stopping_the_worker_under_load_answers_what_was_in_flight(stack):
    """``docker-compose stop`` sends SIGTERM: the worker's launcher lets running batches finish
    (DRAIN_SECONDS), then stops TorchServe's Java frontend and exits 0. Clients see 200s through
    the drain and clean 503s once no worker is left: never a 500 or a reset."""
    image = labelled_images(1, seed=34)[0][0]
    outcomes: list[tuple[float, int]] = []
    wait_for(lambda: every_model_ready(stack), "every model ready before the load", 300)

    async def client_loop(client: httpx.AsyncClient, until: float) -> None:
        while time.monotonic() < until:
            started = time.monotonic()
            response = await client.post(
                "/v1/models/eca_resnet50/classify", files=[("file", ("x", image, "image/jpeg"))]
            )
            outcomes.append((started, response.status_code))
            if response.status_code != 200:
                await asyncio.sleep(0.2)

    async def load_while_stopping() -> float:
        async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
            until = time.monotonic() + 25
            loops = [asyncio.create_task(client_loop(client, until)) for _ in range(6)]
            await asyncio.sleep(3)
            stop_sent = time.monotonic()
            await asyncio.to_thread(stack.compose, "stop", "torchserve")
            await asyncio.gather(*loops)
            return stop_sent

    stop_sent = asyncio.run(load_while_stopping())
    statuses = {status for _, status in outcomes}
    answered_in_drain = sum(1 for t, s in outcomes if t >= stop_sent and s == 200)
    print(f"outcomes: { {s: sum(1 for _, x in outcomes if x == s) for s in statuses} }, "
          f"{answered_in_drain} answered 200 after SIGTERM")  # fmt: skip
    assert statuses <= {200, 503}, statuses
    assert answered_in_drain > 0
    assert all(s == 200 for t, s in outcomes if t < stop_sent)
    worker = stack.inspect("torchserve")
    assert worker["State"]["ExitCode"] == 0  # stopped by its launcher, not killed at the grace
    logs = run(["docker", "logs", stack.container("torchserve")], stack.env)
    assert "draining (at most 10 s) before stopping TorchServe" in logs


COUNT_INFERENCES = (
    "import re, urllib.request\n"
    "text = urllib.request.urlopen('http://127.0.0.1:8082/metrics', timeout=5).read().decode()\n"
    "print(sum(map(float, re.findall(r'^ts_inference_requests_total{.*} (\\S+)$', text, re.M))))\n"
)


def every_model_ready(stack: Stack) -> bool:
    """``/readyz`` is 200 once one model is ready; these tests send to each, and images go
    only to an endpoint checked ready (no longer queued at a TorchServe still loading)."""
    response = httpx.get(f"{stack.url}/readyz", timeout=5)  # wait_for retries its errors
    return response.status_code == 200 and set(response.json()["models"].values()) == {"ready"}


def test_scaled_to_two_workers_the_gateway_sends_both_work(stack):
    """``--scale torchserve=2``: the gateway finds the second replica through compose's DNS
    and both compute batches (each TorchServe's own request counter says so)."""
    stack.compose("up", "-d", "--no-build", "--scale", "torchserve=2", "torchserve")

    def endpoints() -> int:
        response = httpx.get(f"{stack.url}/readyz", timeout=5)
        return response.json().get("endpoints", {}).get("eca_resnet50", 0)

    wait_for(lambda: endpoints() == 2, "both replicas ready behind the gateway", timeout=600)
    replicas = stack.compose("ps", "-q", "torchserve").split()
    assert len(replicas) == 2

    def counts() -> list[float]:
        return [
            float(run(["docker", "exec", r, "python", "-c", COUNT_INFERENCES], stack.env))
            for r in replicas
        ]

    before = counts()
    images, labels = labelled_images(40, seed=35)
    responses = asyncio.run(send_all(stack.url, "eca_resnet50", images, concurrency=8))
    assert [top1(r) for r in responses] == labels
    computed = [after - was for after, was in zip(counts(), before, strict=True)]
    print(f"requests each replica computed: {computed}")
    assert all(c > 0 for c in computed), computed


def test_down_leaves_nothing_behind(stack):
    stack.compose("down", "-v", "--remove-orphans")
    label = f"label=com.docker.compose.project={PROJECT}"
    for kind in ("container", "network", "volume"):
        listed = run(["docker", kind, "ls", "-q", "--filter", label]
                     + (["--all"] if kind == "container" else []), stack.env)  # fmt: skip
        assert listed.strip() == "", kind
