"""The gateway in front of a real TorchServe: correct answers under concurrency, exact metrics,
a worker killed mid-load, a flood past the queue, a dead backend, and the in-process backend."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import time
from collections.abc import Awaitable

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image

from model_store.demo.synthetic import CLASS_NAMES, encode, make_images
from model_store.demo.tiny import TINY_INPUT_SIZE
from model_store.torchserve.host import free_ports
from model_store.worker.transforms import images_to_batch
from model_store.zoo.models import count_parameters
from service.backends.inprocess import InProcessBackend
from service.settings import GatewaySettings

from ..servers import GatewayThread, gateway_settings

pytestmark = pytest.mark.slow


def labelled_images(count: int, seed: int) -> tuple[list[bytes], list[str]]:
    images, labels = make_images(count, seed=seed, size=(80, 64))
    return [encode(im, "JPEG" if i % 2 else "PNG") for i, im in enumerate(images)], [
        CLASS_NAMES[i] for i in labels
    ]


async def send_all(
    url: str, model: str, images: list[bytes], concurrency: int, answered: list[int] | None = None
) -> list[httpx.Response]:
    """Every image as its own request, ``concurrency`` at a time; ``answered`` (if given)
    collects each answer's index as it arrives."""
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one(index: int, data: bytes) -> httpx.Response:
            async with semaphore:
                response = await client.post(
                    f"/v1/models/{model}/classify", files=[("file", ("x", data, "image/jpeg"))]
                )
            if answered is not None:
                answered.append(index)
            return response

        return await asyncio.gather(*(one(i, data) for i, data in enumerate(images)))


def top1(response: httpx.Response) -> str:
    return response.json()["results"][0]["predictions"][0]["label"]


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{name}\{{{re.escape(label_text)}\}} (\S+)$", text, flags=re.M)
    return float(match[1]) if match else 0.0


def test_200_concurrent_distinct_images_each_get_their_own_answer(gateway):
    images, labels = labelled_images(200, seed=2024)
    before = metric(
        gateway.url, "gateway_requests_total", protocol="v1", model="eca_resnet50", code="200"
    )
    responses = asyncio.run(send_all(gateway.url, "eca_resnet50", images, concurrency=32))
    assert [r.status_code for r in responses] == [200] * 200
    assert [top1(r) for r in responses] == labels
    batch_sizes = [size for r in responses for size in r.json()["timing"]["batch_sizes"]]
    assert max(batch_sizes) > 1, "concurrent requests should have been batched"
    assert (
        metric(
            gateway.url, "gateway_requests_total", protocol="v1", model="eca_resnet50", code="200"
        )
        - before
        == 200
    )


def test_multi_image_request_through_torchserve(gateway):
    images, labels = labelled_images(6, seed=99)
    files = [("file", (f"{i}", data, "application/octet-stream")) for i, data in enumerate(images)]
    response = httpx.post(
        f"{gateway.url}/v1/models/se_resnet50/classify",
        files=files,
        params={"top_k": 2},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert [r["predictions"][0]["label"] for r in response.json()["results"]] == labels
    assert {len(r["predictions"]) for r in response.json()["results"]} == {2}
    # where the time went, the worker's own parts as it reported them
    header = response.headers["server-timing"]
    names = [part.split(";")[0] for part in header.split(", ")]
    assert names == ["read", "validate", "queue", "backend", "wait", "decode", "model", "worker",
                     "total"]  # fmt: skip
    timing = response.json()["timing"]
    worker = timing["worker"]
    assert worker["decode_ms"] > 0 and worker["model_ms"] > 0
    assert worker["wait_ms"] + worker["decode_ms"] + worker["model_ms"] <= worker["total_ms"]
    assert worker["total_ms"] <= timing["backend_ms"] <= timing["total_ms"]


@pytest.mark.parametrize(
    ("value", "why"), [(np.nan, "NaN"), (np.inf, "infinity"), (1e38, "extreme but finite")]
)
def test_preprocessed_pixels_the_eval_pipeline_never_makes_fail_alone_at_the_worker(
    gateway, value, why
):
    """The worker judges a tensor's values (the gateway checks its shape): NaN, infinity or
    1e38 (finite, but the model's output would be NaN) is a 400 ``invalid_tensor`` naming the
    bound, and a good request sharing its batch is answered."""
    side = TINY_INPUT_SIZE
    bad = np.zeros((3, side, side), np.float32)
    bad[0, 0, 0] = value
    good = images_to_batch(make_images(1, seed=5, size=(80, 64))[0], side).numpy()[0]

    def infer(client: httpx.AsyncClient, pixels: np.ndarray) -> Awaitable[httpx.Response]:
        """As binary tensor data: JSON has no NaN or infinity."""
        raw = pixels.astype("<f4").tobytes()
        tensor = {"name": "pixel_values", "shape": [1, 3, side, side], "datatype": "FP32"}
        header = json.dumps(
            {"inputs": [tensor | {"parameters": {"binary_data_size": len(raw)}}]}
        ).encode()
        return client.post(
            "/v2/models/se_resnet50/infer",
            content=header + raw,
            headers={
                "Inference-Header-Content-Length": str(len(header)),
                "Content-Type": "application/octet-stream",
            },
        )

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
            return await asyncio.gather(infer(client, bad), infer(client, good))

    refused, answered = asyncio.run(both())
    assert refused.status_code == 400, (why, refused.text)
    assert "NaN, infinity or values beyond ±7.92" in refused.json()["error"]
    assert answered.status_code == 200, answered.text


def worker_pid(torchserve, model: str) -> int:
    return int(torchserve.workers(model)[0]["pid"])


@pytest.mark.parametrize("model", ["eca_resnet50", "se_resnet50"])
def test_tritonclient_through_torchserve_answers_as_v1(gateway, model):
    """The Open Inference Protocol end to end with Triton's client, through the real workers
    (eca: AOTInductor, se: OpenVINO): encoded images with the classification extension, and
    the same images preprocessed by the client (the eval pipeline) with the FP32 softmax."""
    images, labels = labelled_images(6, seed=31)
    files = [("file", (f"{i}", data, "application/octet-stream")) for i, data in enumerate(images)]
    v1 = httpx.post(
        f"{gateway.url}/v1/models/{model}/classify", files=files, params={"top_k": 3}, timeout=60
    ).json()["results"]
    with triton.InferenceServerClient(gateway.url.removeprefix("http://")) as client:
        assert client.is_server_ready() and client.is_model_ready(model)
        metadata = client.get_model_metadata(model)
        side = TINY_INPUT_SIZE
        assert metadata["inputs"][1]["shape"] == [-1, 3, side, side]
        assert metadata["outputs"][0]["shape"] == [-1, len(CLASS_NAMES)]
        encoded = triton.InferInput("images", [len(images)], "BYTES")
        encoded.set_data_from_numpy(np.array(images, dtype=np.object_))
        top3 = triton.InferRequestedOutput("probabilities", class_count=3)
        classes = client.infer(model, [encoded], outputs=[top3]).as_numpy("probabilities")
        decoded = [Image.open(io.BytesIO(data)) for data in images]
        preprocessed = triton.InferInput("pixel_values", [len(images), 3, side, side], "FP32")
        preprocessed.set_data_from_numpy(images_to_batch(decoded, side).contiguous().numpy())
        softmax = client.infer(model, [preprocessed]).as_numpy("probabilities")
    for row, probabilities, answer, label in zip(classes, softmax, v1, labels, strict=True):
        served = [item.decode().split(":", 2) for item in row]
        assert [(int(i), name) for _, i, name in served] == [
            (p["index"], p["label"]) for p in answer["predictions"]
        ]
        assert [float(s) for s, _, _ in served] == pytest.approx(
            [p["score"] for p in answer["predictions"]], abs=1e-6
        )
        assert served[0][2] == label
        assert [int(i) for i in np.argsort(-probabilities)[:3]] == [
            p["index"] for p in answer["predictions"]
        ]
        np.testing.assert_allclose(
            probabilities[[p["index"] for p in answer["predictions"]]],
            [p["score"] for p in answer["predictions"]],
            atol=1e-5,
        )


def test_killing_a_worker_mid_load_gives_answers_or_clear_errors_then_recovers(gateway, torchserve):
    images, labels = labelled_images(120, seed=31337)
    victim = worker_pid(torchserve, "se_resnet50")

    answered: list[int] = []

    async def load_and_kill():
        task = asyncio.create_task(
            send_all(gateway.url, "se_resnet50", images, concurrency=8, answered=answered)
        )
        while len(answered) < 16 and not task.done():  # the load is flowing
            await asyncio.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        in_flight_at_kill = len(images) - len(answered)
        return await task, in_flight_at_kill

    responses, in_flight_at_kill = asyncio.run(load_and_kill())
    assert in_flight_at_kill >= 100  # most of the load was sent or still to send when it died
    for response, label in zip(responses, labels, strict=True):
        assert response.status_code in (200, 503, 504), response.text
        if response.status_code == 200:
            assert top1(response) == label  # never someone else's answer
        else:
            assert response.json()["error"]["code"] in ("unavailable", "backend_timeout")
    # TorchServe restarts the worker; the gateway follows. /readyz stayed 200 all along (the
    # eca model was ready): the killed model's own readiness is what to wait for.
    assert httpx.get(f"{gateway.url}/readyz", timeout=10).status_code == 200
    deadline = time.monotonic() + 180
    while (
        httpx.get(f"{gateway.url}/v1/models/se_resnet50/ready", timeout=10).status_code != 200
        or worker_pid(torchserve, "se_resnet50") == victim
    ):
        assert time.monotonic() < deadline, "worker never came back"
        time.sleep(1)
    time.sleep(GatewaySettings().breaker_cooldown_s)  # a circuit opened by the crash has closed
    after = asyncio.run(send_all(gateway.url, "se_resnet50", images[:10], concurrency=4))
    assert [r.status_code for r in after] == [200] * 10
    assert [top1(r) for r in after] == labels[:10]


def test_flood_past_the_queue_gives_503s_and_bounded_queue(torchserve):
    # the queue is under test, not slow clients: 150 connections opened at once by this
    # process on a loaded CI machine may take seconds to send their heads and bodies
    settings = gateway_settings(
        torchserve,
        max_batch_size=4,
        queue_limit=8,
        max_concurrent_batches=1,
        header_timeout_s=120,
        upload_timeout_s=120,
        min_upload_rate_bps=0,
    )
    images, labels = labelled_images(150, seed=5)
    with GatewayThread(settings) as flooded:
        depths: list[float] = []

        async def flood_and_watch():
            async def watch():
                while True:
                    depths.append(metric(flooded.url, "gateway_queue_depth", model="eca_resnet50"))
                    await asyncio.sleep(0.05)

            watcher = asyncio.create_task(watch())
            responses = await send_all(flooded.url, "eca_resnet50", images, concurrency=150)
            watcher.cancel()
            return responses

        responses = asyncio.run(flood_and_watch())
        rejected = metric(
            flooded.url, "gateway_requests_total", protocol="v1", model="eca_resnet50", code="503"
        )
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
    assert all(int(r.headers["retry-after"]) >= 1 for r in responses if r.status_code == 503)
    assert all(
        top1(r) == label for r, label in zip(responses, labels, strict=True) if r.status_code == 200
    )
    assert max(depths) <= 8
    assert rejected == codes.count(503)


def test_backend_down_fails_fast_with_503_and_not_ready():
    inference, management = free_ports(2)  # nothing listens there
    settings = GatewaySettings(
        models=["se_resnet50"],
        torchserve_inference_url=f"http://127.0.0.1:{inference}",
        torchserve_management_url=f"http://127.0.0.1:{management}",
        torchserve_key_file=None,
        breaker_failures=2,
        breaker_cooldown_s=30,
    )
    [image], _ = labelled_images(1, seed=1)
    with GatewayThread(settings) as down:
        codes = []
        for _ in range(3):
            response = httpx.post(
                f"{down.url}/v1/models/se_resnet50/classify",
                content=image,
                headers={"Content-Type": "image/png"},
                timeout=30,
            )
            codes.append(response.status_code)
            assert response.headers["retry-after"]
        open_circuit = httpx.post(
            f"{down.url}/v1/models/se_resnet50/classify",
            content=image,
            headers={"Content-Type": "image/png"},
            timeout=30,
        )
        ready = httpx.get(f"{down.url}/v1/models/se_resnet50/ready", timeout=30)
    assert codes == [503, 503, 503]
    assert (  # the readiness checks found it unreachable: no request of a user is sent there
        open_circuit.status_code == 503 and "unreachable" in open_circuit.json()["error"]["message"]
    )
    assert int(open_circuit.headers["retry-after"]) > 1  # refused at once, not tried
    assert ready.status_code == 503 and "unreachable" in ready.json()["status"]


def test_inprocess_backend_serves_the_same_archives(tiny_archives, gateway):
    settings = GatewaySettings(
        models=["se_resnet50"], backend="inprocess", archive_dir=tiny_archives
    )
    images, labels = labelled_images(12, seed=8)
    with GatewayThread(settings) as inprocess:
        local = asyncio.run(send_all(inprocess.url, "se_resnet50", images, concurrency=6))
        ready = httpx.get(f"{inprocess.url}/readyz", timeout=10).json()
    remote = asyncio.run(send_all(gateway.url, "se_resnet50", images, concurrency=6))
    assert [top1(r) for r in local] == labels
    assert ready["backend"] == "inprocess" and ready["status"] == "ready"
    for mine, theirs in zip(local, remote, strict=True):
        assert mine.json()["results"][0]["predictions"][0]["score"] == pytest.approx(
            theirs.json()["results"][0]["predictions"][0]["score"], abs=1e-4
        )


def test_the_gateway_exports_the_runtime_each_worker_reports(gateway, tiny_trained):
    assert httpx.get(f"{gateway.url}/readyz", timeout=30).status_code == 200
    for model, runtime in (("eca_resnet50", "aot"), ("se_resnet50", "openvino")):
        exported_runtime = {
            "model": model,
            "runtime": runtime,
            "precision": "fp32",
            "weight_packing": "at_load",  # by the serving worker, for its CPU and threads
        }
        assert metric(gateway.url, "gateway_model_runtime", **exported_runtime) == 1
        # prebuilt models: the worker process never compiled a graph, before or after answers
        asyncio.run(send_all(gateway.url, model, labelled_images(3, seed=5)[0], concurrency=3))
        exported = httpx.get(f"{gateway.url}/metrics", timeout=30).text
        assert f'gateway_worker_compiled_graphs{{model="{model}"}} 0.0' in exported
    listed = httpx.get(f"{gateway.url}/v1/models", timeout=30).json()["models"]
    assert {m["name"]: m["runtime"] for m in listed} == {
        "eca_resnet50": "aot",
        "se_resnet50": "openvino",
    }
    cpus = len(os.sched_getaffinity(0))  # each batch on every CPU, one batch at a time
    assert {(m["weight_packing"], m["threads"], m["cpu_slots"]) for m in listed} == {
        ("at_load", cpus, 1)
    }
    # sizes as the workers counted them (the gateway has no torch to count them itself)
    for m in listed:
        total, attention = count_parameters(tiny_trained(m["name"]))
        assert (m["parameters"], m["attention_parameters"]) == (total, attention) and attention > 0


def test_gateway_batches_larger_than_the_workers_buckets_keep_the_model_not_ready(torchserve):
    with GatewayThread(gateway_settings(torchserve, max_batch_size=16)) as misfit:
        response = httpx.get(f"{misfit.url}/v1/models/eca_resnet50/ready", timeout=30)
    assert response.status_code == 503
    status = response.json()["status"]
    assert status.startswith("misconfigured") and "largest warmed batch bucket 8" in status


def test_the_inprocess_backend_refuses_to_start_with_batches_past_the_buckets(tiny_archives):
    backend = InProcessBackend(["se_resnet50"], tiny_archives, timeout_s=30, max_batch_size=16)
    with pytest.raises(ValueError, match="largest warmed batch bucket 8"):
        asyncio.run(backend.start())
    asyncio.run(backend.close())
