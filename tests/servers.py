"""Real servers for the tests: tiny trained models in real archives, a real TorchServe (Java,
started as benchmarks start it: ``perf.stack``) and the real gateway app under uvicorn in a
thread of the test process (so tests may hand it a backend), on free loopback ports."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import uvicorn

from model_store.demo.synthetic import CLASS_NAMES, encode, make_images
from model_store.demo.tiny import save_tiny
from model_store.torchserve.host import free_ports
from model_store.torchserve.launcher import TorchServe
from model_store.worker.archive import ArchiveSpec, build_archive
from perf.stack import gateway_fields
from service.app import create_app
from service.http_server import server_config
from service.settings import GatewaySettings

# Both runtimes inside real workers: eca with AOTInductor packages, se with an OpenVINO IR.
STACK_MODELS = {"eca_resnet50": "inductor", "se_resnet50": "openvino"}


def build_tiny_archives(workdir: Path, trained) -> Path:
    archives = workdir / "archives"
    for model, runtime in STACK_MODELS.items():
        checkpoint = save_tiny(trained(model), workdir / f"{model}.pt")
        spec = ArchiveSpec(model, checkpoint=checkpoint, runtime=runtime)
        build_archive(spec, archives, progress=lambda _: None)
    return archives


class GatewayThread:
    """The real gateway app under uvicorn, in a thread of the test process."""

    def __init__(self, settings: GatewaySettings, backend: object | None = None) -> None:
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(settings, backend)  # type: ignore[arg-type]
        config = server_config(app, settings, "127.0.0.1", self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> GatewayThread:
        self.thread.start()
        deadline = time.monotonic() + 300
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def gateway_settings(server: TorchServe, **overrides) -> GatewaySettings:
    return GatewaySettings(**(gateway_fields(server, list(STACK_MODELS)) | overrides))


def serve_in_process(model: str, archive_dir: Path, batch_size: int) -> dict:
    """Six synthetic photos classified one by one by a gateway serving ``model`` from its archive
    in-process (the worker's own classifier, in this process: a plug-in registered here is
    seen), each answered 200 with the right label for at least five; returns ``model``'s entry
    in ``/v1/models``."""
    settings = GatewaySettings(
        backend="inprocess", models=[model], archive_dir=archive_dir, max_batch_size=batch_size
    )
    images, labels = make_images(6, seed=99)
    with GatewayThread(settings) as gateway:
        answers = [
            httpx.post(
                f"{gateway.url}/v1/models/{model}/classify",
                content=encode(image, "JPEG", quality=92),
                headers={"Content-Type": "image/jpeg"},
                timeout=120,
            )
            for image in images
        ]
        models = httpx.get(f"{gateway.url}/v1/models", timeout=30).json()
    assert [a.status_code for a in answers] == [200] * len(images)
    top1 = [a.json()["results"][0]["predictions"][0]["label"] for a in answers]
    assert sum(t == CLASS_NAMES[label] for t, label in zip(top1, labels, strict=True)) >= 5
    [served] = [m for m in models["models"] if m["name"] == model]
    return served
