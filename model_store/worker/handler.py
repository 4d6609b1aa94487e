"""TorchServe handler: TorchServe's request contract around ``ImageClassifier``, nothing more.

A request is either one image as the raw body (``curl -T img.jpg``) or multipart form fields,
each field one input, in field order (what the gateway sends: a whole batch in one request): an
encoded image, or a preprocessed one in a field named ``tensor_*``; plus optional ``top_k``
and ``probabilities`` fields (``contract.protocol``). TorchServe's own batching may
hand several such requests at once; all their inputs run as one model batch. Each request gets
``{"model": ..., "runtime": ..., "compiled_graphs": ..., "results": [{"predictions": [...]} |
{"error": {...}}]}``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ts.torch_handler.base_handler import BaseHandler

from contract.answers import Result, WorkerAnswer
from contract.protocol import (
    COMPILED_GRAPHS_FIELD,
    PROBABILITIES_FIELD,
    RESULTS_FIELD,
    TENSOR_FIELD_PREFIX,
    TOP_K_FIELD,
)
from model_store.worker.classifier import ImageClassifier
from model_store.worker.config import ClassifierConfig
from model_store.worker.inputs import ClassifyRequest, tensor_input

PARAMETER_FIELDS = {TOP_K_FIELD, PROBABILITIES_FIELD}

log = logging.getLogger(__name__)


def parse_top_k(value: Any) -> int | None:
    """A malformed ``top_k`` becomes 0, which fails that request's images only, not the batch."""
    if value is None:
        return None
    try:
        return int(value.decode() if isinstance(value, bytes | bytearray) else value)
    except (TypeError, ValueError, UnicodeDecodeError):
        return 0


def payload(name: str, value: Any) -> bytes | np.ndarray:
    """One input field as ``ImageClassifier.classify`` takes it (text is no image: b"")."""
    data = bytes(value) if isinstance(value, bytes | bytearray) else b""
    return tensor_input(data) if name.startswith(TENSOR_FIELD_PREFIX) else data


class AttentionClassifierHandler(BaseHandler):
    """The module's only class: TorchServe refuses a handler module that defines another."""

    def initialize(self, context: Any) -> None:
        self.context = context
        self.manifest = context.manifest
        model_dir = Path(context.system_properties["model_dir"])
        settings = dict((context.model_yaml_config or {}).get("handler", {}))
        gpu_id = context.system_properties.get("gpu_id")
        if settings.get("device", "auto") == "auto" and gpu_id is not None:
            settings["device"] = f"cuda:{gpu_id}"
        self.classifier = ImageClassifier.load(ClassifierConfig.from_mapping(settings, model_dir))
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
        return {
            **self.classifier.info,
            "threads": torch.get_num_threads(),
            COMPILED_GRAPHS_FIELD: self.classifier.compiled_graphs,
        }

    def preprocess(self, data: list[dict[str, Any]]) -> list[ClassifyRequest]:
        """Per request: its inputs in order, its ``top_k``, whether it wants probabilities."""
        return [
            ClassifyRequest(
                [payload(k, v) for k, v in request.items() if k not in PARAMETER_FIELDS],
                parse_top_k(request.get(TOP_K_FIELD)),
                request.get(PROBABILITIES_FIELD) in (b"1", "1"),
            )
            for request in data
        ]

    def inference(
        self, requests: list[ClassifyRequest], *args: Any, **kwargs: Any
    ) -> list[list[Result]]:
        """All inputs of all requests as one batch, then split back per request."""
        payloads, ks, wants = [], [], []
        default_k = self.classifier.config.top_k
        for request in requests:
            payloads += request.inputs
            ks += [default_k if request.top_k is None else request.top_k] * len(request.inputs)
            wants += [request.probabilities] * len(request.inputs)
        results = self.classifier.classify(payloads, ks, probabilities=wants)
        grouped, start = [], 0
        for request in requests:
            grouped.append(results[start : start + len(request.inputs)])
            start += len(request.inputs)
        return grouped

    def postprocess(self, grouped: list[list[Result]]) -> list[WorkerAnswer]:
        info = self.classifier.info
        compiled = self.classifier.compiled_graphs
        return [
            {
                "model": info["model"],
                "runtime": info["runtime"],
                COMPILED_GRAPHS_FIELD: compiled,
                RESULTS_FIELD: results,
            }
            for results in grouped
        ]
