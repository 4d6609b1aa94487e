"""Against a real TorchServe: the handler's contract, correct labels, isolation of bad images,
TorchServe's own batching, token authorization and its Prometheus metrics."""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from contract import batch
from contract.protocol import input_field
from model_store.demo.synthetic import CLASS_NAMES, encode, make_images
from model_store.torchserve.readiness import warm_frontend
from model_store.worker.classifier import ImageClassifier
from model_store.worker.config import ClassifierConfig

pytestmark = pytest.mark.slow


def auth(server) -> dict[str, str]:
    return server.headers("inference")


def predict(server, model: str, headers: dict[str, str] | None = None, **kwargs) -> httpx.Response:
    url = f"{server.inference_url}/predictions/{model}"
    return httpx.post(url, headers=auth(server) | (headers or {}), timeout=60, **kwargs)


def multipart(images: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [
        (input_field("image", i), (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)
    ]


@pytest.fixture(scope="module")
def held_out():
    images, labels = make_images(12, seed=4321)
    return [encode(im, "JPEG", quality=92) for im in images], labels


def top1(result: dict) -> str:
    return result["predictions"][0]["label"]


def test_single_image_as_raw_body(torchserve, held_out):
    images, labels = held_out
    response = predict(
        torchserve, "eca_resnet50", content=images[0], headers={"Content-Type": "image/jpeg"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "eca_resnet50" and body["runtime"] == "aot"
    [result] = body["results"]
    predictions = result["predictions"]
    assert len(predictions) == len(CLASS_NAMES)  # top_k 5 clamped to the 4 classes
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True) and 0.99 < sum(scores) < 1.01
    assert {p["label"] for p in predictions} == set(CLASS_NAMES)
    assert all(CLASS_NAMES[p["index"]] == p["label"] for p in predictions)
    assert top1(result) == CLASS_NAMES[labels[0]]


@pytest.mark.parametrize("model", ["eca_resnet50", "se_resnet50"])
def test_batch_request_gives_each_image_its_own_correct_label(
    torchserve, held_out, model, tmp_path
):
    images, labels = held_out
    response = predict(torchserve, model, files=multipart(images), data={"top_k": "2"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(images)
    assert [top1(r) for r in results] == [CLASS_NAMES[label] for label in labels]
    assert all(len(r["predictions"]) == 2 for r in results)


def test_torchserve_matches_the_in_process_classifier(torchserve, held_out):
    """Same bytes, same code: the worker's scores equal an in-process run of the same weights."""
    images, _ = held_out
    served = predict(torchserve, "se_resnet50", files=multipart(images)).json()["results"]
    weights = torchserve.archive_dir.parent / "se_resnet50.pt"
    local = ImageClassifier.load(
        ClassifierConfig("se_resnet50", weights, compile=False, batch_buckets=(1, 2, 4, 8))
    )
    for remote, mine in zip(served, local.classify(images), strict=True):
        assert [p["index"] for p in remote["predictions"]] == [
            p["index"] for p in mine["predictions"]
        ]
        assert remote["predictions"][0]["score"] == pytest.approx(
            mine["predictions"][0]["score"], abs=1e-4
        )


def test_undecodable_image_fails_alone(torchserve, held_out):
    images, labels = held_out
    batch = [
        images[0],
        b"\xff\xd8\xff\xe0 truncated jpeg",
        images[1],
        images[2][: len(images[2]) // 3],
    ]
    response = predict(torchserve, "eca_resnet50", files=multipart(batch))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert top1(results[0]) == CLASS_NAMES[labels[0]]
    assert results[1]["error"]["code"] == "undecodable_image"
    assert top1(results[2]) == CLASS_NAMES[labels[1]]
    assert results[3]["error"]["code"] == "undecodable_image"


def test_bad_top_k_fails_only_its_own_request(torchserve, held_out):
    images, labels = held_out

    def send(top_k: str) -> httpx.Response:
        return predict(
            torchserve, "se_resnet50", files=multipart(images[:2]), data={"top_k": top_k}
        )

    with ThreadPoolExecutor(4) as pool:  # concurrent: TorchServe may batch them together
        bad, good, zero, big = pool.map(send, ["abc", "3", "0", "21"])
    for response in (bad, zero, big):
        assert [r["error"]["code"] for r in response.json()["results"]] == ["invalid_top_k"] * 2
    assert [top1(r) for r in good.json()["results"]] == [CLASS_NAMES[label] for label in labels[:2]]


def test_concurrent_single_requests_are_each_answered_correctly(torchserve):
    """Twelve clients at once on a worker of batchSize 1 (the gateway batches, TorchServe does
    not): every answer its own image's label, none crossed with another's."""
    images, labels = make_images(24, seed=777)
    payloads = [encode(im, "PNG") for im in images]

    def send(data: bytes) -> str:
        response = predict(torchserve, "eca_resnet50", content=data)
        assert response.status_code == 200, response.text
        return top1(response.json()["results"][0])

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, payloads))
    assert answers == [CLASS_NAMES[label] for label in labels]


def test_requests_without_a_token_are_refused(torchserve, held_out):
    url = f"{torchserve.inference_url}/predictions/eca_resnet50"
    refused = httpx.post(url, content=held_out[0][0], timeout=30)
    wrong = httpx.post(
        url, content=held_out[0][0], headers={"Authorization": "Bearer x"}, timeout=30
    )
    # TorchServe 0.12 answers 400 (not 401) when the token is missing or wrong.
    assert refused.status_code in (400, 401) and wrong.status_code in (400, 401)
    assert "predictions" not in refused.text
    assert predict(torchserve, "eca_resnet50", content=held_out[0][0]).status_code == 200


def test_management_api_reports_ready_workers(torchserve):
    response = httpx.get(
        f"{torchserve.management_url}/models/eca_resnet50",
        headers=torchserve.headers("management"),
        timeout=30,
    )
    [description] = response.json()
    assert description["batchSize"] == 1  # the gateway batches: one batching layer
    assert description["workers"] and all(w["status"] == "READY" for w in description["workers"])


def inference_count(server, model: str) -> float:
    text = httpx.get(f"{server.metrics_url}/metrics", timeout=30).text
    pattern = rf'^ts_inference_requests_total\{{[^}}]*model_name="{model}"[^}}]*\}} ([0-9.e+]+)$'
    return sum(float(v) for v in re.findall(pattern, text, flags=re.M))


def test_metrics_endpoint_counts_inference_requests(torchserve, held_out):
    before = inference_count(torchserve, "se_resnet50")
    for _ in range(3):
        assert predict(torchserve, "se_resnet50", content=held_out[0][1]).status_code == 200
    assert inference_count(torchserve, "se_resnet50") - before == 3


def test_workers_describe_their_runtime_and_share_every_cpu(torchserve):
    """Two workers on this machine (one per model): each batch runs on all the CPUs, and one
    CPU slot lets one batch compute at a time (no cgroup quota here: the affinity mask is what
    this process may use)."""
    response = httpx.get(
        f"{torchserve.management_url}/models/eca_resnet50",
        params={"customized": "true"},
        headers=torchserve.headers("management"),
        timeout=60,
    )
    [description] = response.json()
    facts = description["customizedMetadata"]
    facts = json.loads(facts) if isinstance(facts, str) else facts
    assert facts["runtime"] == "aot" and facts["batch_buckets"] == [1, 2, 4, 8]
    cpus = len(os.sched_getaffinity(0))
    assert facts["threads"] == cpus and facts["cpu_slots"] == 1
    # what the worker process really got, read from the kernel, not from its own report
    [worker] = description["workers"]
    status = Path(f"/proc/{worker['pid']}/status").read_text()
    allowed = re.search(r"^Cpus_allowed_list:\s*(\S+)$", status, re.M)[1]  # type: ignore[index]
    assert sum(cpu_range_size(part) for part in allowed.split(",")) == cpus
    environ = Path(f"/proc/{worker['pid']}/environ").read_bytes().split(b"\0")
    assert f"OMP_NUM_THREADS={cpus}".encode() in environ
    assert facts["weight_packing"] == "at_load"


def cpu_range_size(part: str) -> int:
    """``3`` -> 1, ``0-3`` -> 4 (the kernel's CPU list syntax)."""
    first, _, last = part.partition("-")
    return int(last or first) - int(first) + 1


def test_the_handler_module_defines_one_class():
    """TorchServe loads a handler module only if it defines exactly one class (a second one,
    even a small dataclass, makes every worker die at start)."""
    import inspect

    from model_store.worker import handler

    defined = [
        name
        for name, member in inspect.getmembers(handler, inspect.isclass)
        if member.__module__ == handler.__name__
    ]
    assert defined == ["AttentionClassifierHandler"]


def test_the_frontend_warm_up_sends_empty_requests_the_workers_answer(torchserve):
    """What the launcher sends once the models are ready (``FRONTEND_WARMUP_REQUESTS``): an
    inference request with no input, answered at once with no result, spread over the models."""
    before = {m: inference_count(torchserve, m) for m in torchserve.models}
    sent, _ = warm_frontend(torchserve, 2 * len(torchserve.models))
    after = {m: inference_count(torchserve, m) for m in torchserve.models}
    assert {m: after[m] - before[m] for m in torchserve.models} == dict.fromkeys(
        torchserve.models, 2
    )
    assert sent == 2 * len(torchserve.models)
    empty = predict(torchserve, "eca_resnet50", files={"top_k": (None, "1")})
    assert empty.status_code == 200 and empty.json()["results"] == []
    # bounded in time: a restarted server takes traffic at once, its warm-up queues behind it
    sent, _ = warm_frontend(torchserve, 10**9, max_seconds=0.5)
    assert 0 < sent < 10**9


def test_two_models_workers_take_turns_on_the_cpus(torchserve, held_out):
    """One CPU slot on this machine: of two batches sent to the two models at once, one waits
    while the other computes, and its answer says how long (``timing.wait_ms``)."""
    images = held_out[0][:8]

    def batch(model: str) -> dict:
        response = predict(torchserve, model, files=multipart(images))
        assert response.status_code == 200, response.text
        return response.json()["timing"]

    waits = []
    with ThreadPoolExecutor(2) as pool:
        for _ in range(10):
            timings = list(pool.map(batch, ["eca_resnet50", "se_resnet50"]))
            waits.append(max(t["wait_ms"] for t in timings))
            if waits[-1] > 1:
                break
    assert waits[-1] > 1, waits
    assert all(t["decode_ms"] > 0 and t["model_ms"] > 0 for t in timings)


def test_a_gateway_batch_body_is_answered_input_by_input(torchserve, held_out):
    """What the gateway sends (``contract.batch``): one raw body, no multipart for TorchServe's
    frontend to decode. A body that starts as a batch but does not add up is one bad input."""
    images, labels = held_out
    body = batch.encode([("image", data) for data in images[:3]], top_k=2, probabilities=False)
    response = predict(
        torchserve, "eca_resnet50", content=body, headers={"Content-Type": batch.CONTENT_TYPE}
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [top1(r) for r in results] == [CLASS_NAMES[label] for label in labels[:3]]
    assert {len(r["predictions"]) for r in results} == {2}
    broken = predict(
        torchserve, "eca_resnet50", content=body[:-1], headers={"Content-Type": batch.CONTENT_TYPE}
    )
    [failure] = broken.json()["results"]
    assert failure["error"]["code"] == "undecodable_image"
