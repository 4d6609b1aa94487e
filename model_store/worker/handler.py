"""TorchServe handler: TorchServe's request contract around ``ImageClassifier``, nothing more.

A request is a whole batch as one raw body (``contract.batch``: what the gateway sends), one
image as the raw body (``curl -T img.jpg``), or multipart form fields, each field one input, in
field order: an encoded image, or a preprocessed one in a field named ``tensor_*``; plus
optional ``top_k`` and ``probabilities`` fields (``contract.protocol``). TorchServe's own
batching may hand several such requests at once; all their inputs run as one model batch.
Each request gets ``{"model": ..., "runtime": ..., "compiled_graphs": ..., "results":
[{"predictions": [...]} | {"error": {...}}], "timing": {...}}``. The batch computes holding
one of the machine's CPU slots (``cpus.CpuSlots``, set up by the launcher), so workers of other
models on the same CPUs take turns with it instead of oversubscribing them.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext, suppress
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ts.torch_handler.base_handler import BaseHandler

from contract import batch
from contract.answers import Result, WorkerAnswer
from contract.protocol import (
    COMPILED_GRAPHS_FIELD,
    INPUT_FIELD_PREFIXES,
    PROBABILITIES_FIELD,
    RESULTS_FIELD,
    TENSOR_FIELD_PREFIX,
    TIMING_FIELD,
    TOP_K_FIELD,
)
from model_store.worker.classifier import ImageClassifier
from model_store.worker.config import ClassifierConfig
from model_store.worker.cpus import CpuSlots
from model_store.worker.inputs import ClassifyRequest, tensor_input
from model_store.worker.timing import Stopwatch

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
    data = bytes(value) if isinstance(value, bytes | bytearray | memoryview) else b""
    return tensor_input(data) if name.startswith(TENSOR_FIELD_PREFIX) else data


def classify_request(request: dict[str, Any]) -> ClassifyRequest:
    """One TorchServe request as the classifier takes it: a gateway batch, or fields (one raw
    body is one field). A body that starts as a batch but does not add up is read as the one
    image it then is, and fails as such."""
    fields = {k: v for k, v in request.items() if k not in PARAMETER_FIELDS}
    body = next(iter(fields.values())) if len(fields) == 1 else None
    if isinstance(body, bytes | bytearray) and batch.is_batch(body):
        with suppress(batch.MalformedBatch):
            sent = batch.decode(body)
            return ClassifyRequest(
                [payload(INPUT_FIELD_PREFIXES[kind], data) for kind, data in sent.inputs],
                sent.top_k,
                sent.probabilities,
            )
    return ClassifyRequest(
        [payload(k, v) for k, v in fields.items()],
        parse_top_k(request.get(TOP_K_FIELD)),
        request.get(PROBABILITIES_FIELD) in (b"1", "1"),
    )


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
        self.slots = CpuSlots.from_environment()
        self.stopwatch = Stopwatch()
        with self._cpu_slot():  # loading computes too (constants, warm-up)
            self.classifier = ImageClassifier.load(
                ClassifierConfig.from_mapping(settings, model_dir)
            )
        log.info(
            "%s serving with runtime %s, %d intra-op threads, %s CPU slots",
            self.classifier.config.model,
            self.classifier.runner.runtime,
            torch.get_num_threads(),
            self.slots.count if self.slots else "no",
        )
        self.initialized = True

    def _cpu_slot(self) -> AbstractContextManager[float]:
        """One of the machine's CPU slots while inside, and the seconds waited for it (none to
        take when the CPUs are not shared)."""
        return self.slots.held() if self.slots is not None else nullcontext(0.0)

    def describe_handle(self) -> dict[str, Any]:
        """What the gateway checks and reports (``GET /models/{name}?customized=true``): the
        runtime actually serving, the warmed batch buckets, the threads of a batch and the
        CPU slots it shares."""
        return {
            **self.classifier.info,
            "cpu_slots": self.slots.count if self.slots is not None else None,
            COMPILED_GRAPHS_FIELD: self.classifier.compiled_graphs,
        }

    def preprocess(self, data: list[dict[str, Any]]) -> list[ClassifyRequest]:
        """Per request: its inputs in order, its ``top_k``, whether it wants probabilities.
        Starts the timing of this call (TorchServe hands a worker one call at a time)."""
        self.stopwatch = Stopwatch()
        return [classify_request(request) for request in data]

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
        with self._cpu_slot() as waited:
            self.stopwatch.seconds["wait"] += waited
            results = self.classifier.classify(payloads, ks, wants, self.stopwatch)
        grouped, start = [], 0
        for request in requests:
            grouped.append(results[start : start + len(request.inputs)])
            start += len(request.inputs)
        return grouped

    def postprocess(self, grouped: list[list[Result]]) -> list[WorkerAnswer]:
        info = self.classifier.info
        compiled = self.classifier.compiled_graphs
        timing = self.stopwatch.timing()
        return [
            {
                "model": info["model"],
                "runtime": info["runtime"],
                COMPILED_GRAPHS_FIELD: compiled,
                RESULTS_FIELD: results,
                TIMING_FIELD: timing,
            }
            for results in grouped
        ]
