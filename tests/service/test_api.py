"""The gateway's HTTP contract with a fake backend: answers, every error code, isolation of
bad requests, backpressure, timeouts, headers, metrics."""

from __future__ import annotations

import asyncio
import io
import re

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client import generate_latest

from model_store.synthetic import encode
from service.app import create_app
from service.backends.base import BackendUnavailable
from service.settings import GatewaySettings

from .fakes import FakeBackend

MODELS = ["se_resnet50", "eca_resnet50"]


def solid(
    colour: tuple[int, int, int], fmt: str = "JPEG", size: tuple[int, int] = (64, 48)
) -> bytes:
    return encode(Image.new("RGB", size, colour), fmt)


RED, GREEN, BLUE = solid((220, 10, 10)), solid((10, 220, 10), "PNG"), solid((10, 10, 220), "WEBP")


def make_settings(**overrides) -> GatewaySettings:
    return GatewaySettings(**({"models": MODELS, "max_batch_delay_ms": 5} | overrides))


def make_client(backend: FakeBackend | None = None, **settings) -> TestClient:
    return TestClient(create_app(make_settings(**settings), backend or FakeBackend(MODELS)))


async def concurrently(app, requests: list[tuple[str, bytes]]) -> list[httpx.Response]:
    """Send (model, JPEG body) requests at once, with the app's lifespan in this event loop."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30) as http:
            return await asyncio.gather(
                *(
                    http.post(
                        f"/v1/models/{model}/classify",
                        content=body,
                        headers={"Content-Type": "image/jpeg"},
                    )
                    for model, body in requests
                )
            )


@pytest.fixture
def client():
    with make_client() as c:
        yield c


def classify(client, model="eca_resnet50", files=None, content=None, content_type=None, **params):
    headers = {"Content-Type": content_type} if content_type else {}
    return client.post(
        f"/v1/models/{model}/classify", params=params, files=files, content=content, headers=headers
    )


def as_files(*images: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [
        ("file", (f"{i}.img", data, "application/octet-stream")) for i, data in enumerate(images)
    ]


def test_raw_body_classifies_one_image(client):
    response = classify(client, content=RED, content_type="image/jpeg")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "eca_resnet50"
    [result] = body["results"]
    assert result["predictions"][0]["label"] == "red" and len(result["predictions"]) == 3
    assert body["timing"]["batch_sizes"] == [1]
    timing = response.headers["server-timing"]
    assert re.fullmatch(r"queue;dur=[\d.]+, backend;dur=[\d.]+, total;dur=[\d.]+", timing)


def test_multipart_images_come_back_in_order_with_top_k(client):
    response = classify(client, files=as_files(RED, GREEN, BLUE, GREEN), top_k=1)
    assert response.status_code == 200, response.text
    labels = [r["predictions"][0]["label"] for r in response.json()["results"]]
    assert labels == ["red", "green", "blue", "green"]
    assert all(len(r["predictions"]) == 1 for r in response.json()["results"])


def bomb() -> bytes:
    """A 20000 x 20000 PNG of a few hundred KB: 400 M pixels, refused from its header."""
    return encode(Image.new("1", (20000, 20000)), "PNG")


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"model": "vgg16", "content": RED, "content_type": "image/jpeg"}, 404, "model_not_found"),
        ({"content": b"hello", "content_type": "text/plain"}, 415, "unsupported_media_type"),
        ({"content": RED}, 415, "unsupported_media_type"),
        (
            {"content": encode(Image.new("RGB", (8, 8)), "GIF"), "content_type": "image/png"},
            415,
            "unsupported_image_type",
        ),
        ({"content": b"\x89PNG garbage", "content_type": "image/png"}, 400, "undecodable_image"),
        ({"content": RED[: len(RED) // 2], "content_type": "image/jpeg"}, 400, "undecodable_image"),
        ({"content": b"", "content_type": "image/jpeg"}, 400, "undecodable_image"),
        ({"content": bomb(), "content_type": "image/png"}, 413, "image_too_large"),
        ({"content": RED, "content_type": "image/jpeg", "top_k": 0}, 422, "invalid_parameters"),
        ({"content": RED, "content_type": "image/jpeg", "top_k": 21}, 422, "invalid_parameters"),
        (
            {"content": RED, "content_type": "image/jpeg", "top_k": "five"},
            422,
            "invalid_parameters",
        ),
        ({"files": [("other", ("a.jpg", RED, "image/jpeg"))]}, 422, "invalid_parameters"),
        ({"files": [("file", ("a.txt", b"text", "text/plain"))]}, 415, "unsupported_media_type"),
        ({"files": as_files(RED, b"not an image", BLUE)}, 400, "undecodable_image"),
        (
            {"content": b"--x\r\nbroken", "content_type": "multipart/form-data"},
            400,
            "malformed_multipart",
        ),
        (
            {"content": b"--x\r\nbroken", "content_type": "multipart/form-data; boundary=x"},
            422,
            "invalid_parameters",
        ),
    ],
)
def test_bad_requests_get_their_status_and_a_json_error(client, kwargs, status, code):
    response = classify(client, **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert "server-timing" in response.headers


def test_byte_and_count_limits(client):
    with make_client(max_upload_bytes=4096, max_images_per_request=2) as small:
        big = solid((1, 2, 3), "PNG", (512, 512)) + b"\0" * 5000
        assert classify(small, content=big, content_type="image/png").status_code == 413
        response = classify(small, files=as_files(RED, RED, RED))
        assert response.status_code == 413 and response.json()["error"]["code"] == "too_many_images"


def test_a_bad_request_never_breaks_the_batch_it_would_have_joined():
    backend = FakeBackend(MODELS, delay=0.05)
    app = create_app(make_settings(max_batch_delay_ms=50), backend)
    bodies = [
        RED if i % 3 else b"\xff\xd8\xff\xe0" + b"x" * 40 for i in range(12)
    ]  # every third is broken
    responses = asyncio.run(concurrently(app, [("se_resnet50", body) for body in bodies]))
    for i, response in enumerate(responses):
        if i % 3:
            assert (
                response.status_code == 200
                and response.json()["results"][0]["predictions"][0]["label"] == "red"
            )
        else:
            assert response.status_code == 400
    assert max(backend.batches) > 1  # the good ones really were batched together


def test_backend_down_is_503_with_retry_after():
    backend = FakeBackend(MODELS)
    backend.fail = BackendUnavailable("connection refused", retry_after_s=7)
    with make_client(backend) as client:
        response = classify(client, content=RED, content_type="image/jpeg")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"]["code"] == "unavailable"


def test_backend_timeout_is_504():
    with make_client(FakeBackend(MODELS, delay=2.0), request_timeout_s=0.2) as client:
        response = classify(client, content=RED, content_type="image/jpeg")
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "backend_timeout"


def test_queue_full_is_503_and_the_rest_are_answered():
    backend = FakeBackend(MODELS, delay=0.2)
    app = create_app(
        make_settings(max_batch_size=2, queue_limit=4, max_concurrent_batches=1), backend
    )

    async def flood_then_scrape():
        responses = await concurrently(app, [("se_resnet50", RED)] * 20)
        return responses, generate_latest(app.state.gateway.metrics.registry).decode()

    responses, metrics = asyncio.run(flood_then_scrape())
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 503}
    assert all(r.headers["retry-after"] for r in responses if r.status_code == 503)
    assert all(
        r.json()["results"][0]["predictions"][0]["label"] == "red"
        for r in responses
        if r.status_code == 200
    )
    assert (
        f'gateway_requests_total{{code="503",model="se_resnet50"}} {codes.count(503)}.0' in metrics
    )


def test_metrics_count_exactly_what_was_sent(client):
    for _ in range(3):
        assert classify(client, files=as_files(RED, BLUE)).status_code == 200
    assert classify(client, content=b"junk", content_type="image/png").status_code == 400
    assert classify(client, content=RED, content_type="image/jpeg", top_k=99).status_code == 422
    assert classify(client, model="nope", content=RED, content_type="image/jpeg").status_code == 404
    text = client.get("/metrics").text

    def value(name: str, **labels: str) -> float:
        label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        match = re.search(rf"^{name}\{{{re.escape(label_text)}\}} (\S+)$", text, flags=re.M)
        assert match, f"{name}{{{label_text}}} not in /metrics"
        return float(match[1])

    assert value("gateway_requests_total", model="eca_resnet50", code="200") == 3
    assert value("gateway_requests_total", model="eca_resnet50", code="400") == 1
    assert value("gateway_requests_total", model="eca_resnet50", code="422") == 1
    assert value("gateway_requests_total", model="_unknown", code="404") == 1
    assert value("gateway_images_total", model="eca_resnet50") == 6
    assert (
        value("gateway_request_duration_seconds_count", model="eca_resnet50") == 4
    )  # 422 never reached the route
    assert value("gateway_batch_size_sum", model="eca_resnet50") == 6
    assert value("gateway_queue_wait_seconds_count", model="eca_resnet50") == 6
    assert value("gateway_backend_duration_seconds_count", model="eca_resnet50") == value(
        "gateway_batch_size_count", model="eca_resnet50"
    )
    assert value("gateway_inflight_requests", model="eca_resnet50") == 0
    assert value("gateway_queue_depth", model="eca_resnet50") == 0
    assert 'le="0.005"' in text  # millisecond buckets


def test_models_health_and_readiness():
    backend = FakeBackend(MODELS)
    with make_client(backend) as client:
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert models["se_resnet50"]["parameters"] == 28_088_024
        assert (
            models["eca_resnet50"]["attention"] == "eca"
            and models["eca_resnet50"]["status"] == "ready"
        )
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200
        backend.ready = False
        response = client.get("/readyz")
        assert (
            response.status_code == 503
            and response.json()["models"]["se_resnet50"] == "worker restarting"
        )
        assert client.get("/healthz").status_code == 200


def test_api_key_is_enforced_when_configured():
    with make_client(api_key="s3cret") as client:
        assert classify(client, content=RED, content_type="image/jpeg").status_code == 401
        ok = client.post(
            "/v1/models/se_resnet50/classify",
            content=RED,
            headers={"Content-Type": "image/jpeg", "X-API-Key": "s3cret"},
        )
        assert ok.status_code == 200
        assert client.get("/healthz").status_code == 200  # probes stay open


def test_openapi_schema_describes_both_upload_forms(client):
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/v1/models/{model}/classify"]["post"]
    assert {"multipart/form-data", "image/jpeg", "image/png", "image/webp"} <= set(
        operation["requestBody"]["content"]
    )
    assert {"200", "400", "404", "413", "415", "422", "503", "504"} <= set(operation["responses"])
    top_k = next(p for p in operation["parameters"] if p["name"] == "top_k")
    assert top_k["schema"]["minimum"] == 1 and top_k["schema"]["maximum"] == 20


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GATEWAY_MODELS": "vgg16"}, "unknown models"),
        ({"GATEWAY_MAX_BATCH_SIZE": "0"}, "greater than or equal to 1"),
        ({"GATEWAY_QUEUE_LIMIT": "2", "GATEWAY_MAX_BATCH_SIZE": "8"}, "queue_limit"),
        ({"GATEWAY_BACKEND": "triton"}, "torchserve"),
    ],
)
def test_settings_are_validated_at_start(monkeypatch, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=message):
        GatewaySettings()


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("GATEWAY_MODELS", "eca_resnet50,cbam_resnet50")
    monkeypatch.setenv("GATEWAY_MAX_BATCH_DELAY_MS", "2.5")
    settings = GatewaySettings()
    assert (
        settings.models == ["eca_resnet50", "cbam_resnet50"] and settings.max_batch_delay_ms == 2.5
    )


def test_png_with_alpha_and_16_bit_grey_are_served(client):
    rgba = io.BytesIO()
    Image.new("RGBA", (32, 32), (0, 200, 0, 255)).save(rgba, "PNG")
    grey16 = io.BytesIO()
    Image.new("I;16", (32, 32), 60000).save(grey16, "PNG")
    response = classify(client, files=as_files(rgba.getvalue(), grey16.getvalue()))
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["predictions"][0]["label"] == "green"
