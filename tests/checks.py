"""Assertions shared by the test modules."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from torch._dynamo.utils import counters

from model_store.worker.classifier import ImageClassifier
from model_store.worker.config import ClassifierConfig

INTERNALS = re.compile(r"object at 0x|<[\w.]+ object|0x[0-9a-fA-F]{6,}|Traceback|<_io\.")
"""What must never reach a client's error message: object reprs, addresses, tracebacks."""


def assert_serves_without_compiling_like_eager(
    config: ClassifierConfig, photos: list[bytes], runtime: str, tolerance: float
) -> ImageClassifier:
    """The archive's prebuilt runtime loads and classifies with no dynamo graph compiled, and
    its answers are the eager model's (same ranking, scores within ``tolerance``)."""
    before = counters["stats"]["unique_graphs"]
    served = ImageClassifier.load(config)
    assert served.info["runtime"] == runtime and served.info["prebuilt_fallback"] is None
    results = served.classify(photos) + served.classify(photos[:3])
    assert counters["stats"]["unique_graphs"] == before  # nothing compiled at load or later
    eager = ImageClassifier.load(replace(config, compile=False))
    expected = eager.classify(photos) + eager.classify(photos[:3])
    for mine, reference in zip(results, expected, strict=True):
        assert [p["index"] for p in mine["predictions"]] == [
            p["index"] for p in reference["predictions"]
        ]
        for got, want in zip(mine["predictions"], reference["predictions"], strict=True):
            assert got["score"] == pytest.approx(want["score"], abs=tolerance)
    return served
