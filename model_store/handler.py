"""TorchServe handler: TorchServe's request contract around ``ImageClassifier``, nothing more.

A request is either one image as the raw body (``curl -T img.jpg``) or multipart form fields,
each field one image, in field order (what the gateway sends: a whole batch in one request), plus
an optional ``top_k`` field. TorchServe's own batching may hand several such requests at once;
all their images run as one model batch. Each request gets
``{"model": ..., "runtime": ..., "results": [{"predictions": [...]} | {"error": {...}}]}``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler

from model_store.classifier import ClassifierConfig, ImageClassifier

PARAMETER_FIELDS = {"top_k"}

log = logging.getLogger(__name__)


def parse_top_k(value: Any) -> int | None:
    """A malformed ``top_k`` becomes 0, which fails that request's images only, not the batch."""
    if value is None:
        return None
    try:
        return int(value.decode() if isinstance(value, bytes | bytearray) else value)
    except (TypeError, ValueError, UnicodeDecodeError):
        return 0


class AttentionClassifierHandler(BaseHandler):
    def initialize(self, context: Any) -> None:
        self.context = context
        self.manifest = context.manifest
        model_dir = Path(context.system_properties["model_dir"])
        settings = dict((context.model_yaml_config or {}).get("handler", {}))
        gpu_id = context.system_properties.get("gpu_id")
        if settings.get("device", "auto") == "auto" and gpu_id is not None:
            settings["device"] = f"cuda:{gpu_id}"
        self.classifier = ImageClassifier(ClassifierConfig.from_mapping(settings, model_dir))
        log.info(
            "%s serving with runtime %s, %d intra-op threads",
            self.classifier.config.model,
            self.classifier.runner.runtime,
            torch.get_num_threads(),
        )
        self.initialized = True

    def describe_handle(self) -> dict[str, Any]:
        """What the gateway checks and reports (``GET /models/{name}?customized=true``): the
        runtime actually serving, the warmed batch buckets, the thread count."""
        return {**self.classifier.info, "threads": torch.get_num_threads()}

    def preprocess(self, data: list[dict[str, Any]]) -> list[tuple[list[Any], int | None]]:
        """Per request: its image payloads in order, and its ``top_k``."""
        return [
            (
                [v for k, v in request.items() if k not in PARAMETER_FIELDS],
                parse_top_k(request.get("top_k")),
            )
            for request in data
        ]

    def inference(
        self, requests: list[tuple[list[Any], int | None]], *args: Any, **kwargs: Any
    ) -> list[list[dict[str, Any]]]:
        """All images of all requests as one batch, then split back per request."""
        payloads, ks, counts = [], [], []
        default_k = self.classifier.config.top_k
        for images, top_k in requests:
            payloads += [
                bytes(image) if isinstance(image, bytes | bytearray) else b"" for image in images
            ]
            ks += [default_k if top_k is None else top_k] * len(images)
            counts.append(len(images))
        results = self.classifier.classify(payloads, ks)
        grouped, start = [], 0
        for count in counts:
            grouped.append(results[start : start + count])
            start += count
        return grouped

    def postprocess(self, grouped: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        info = self.classifier.info
        return [{"model": info["model"], "runtime": info["runtime"], "results": r} for r in grouped]
