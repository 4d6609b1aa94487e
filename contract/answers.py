"""The shape of a worker's answer, as the worker writes it and the gateway checks it.

One JSON object per worker request; ``results`` holds one entry per input, in order: its top-k
``predictions`` (with ``probabilities``, the full softmax, when the request asked), or the
``error`` that input alone met (its code one of ``contract.errors``).
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class Prediction(TypedDict):
    index: int
    label: str
    score: float
    """Softmax probability, in [0, 1]."""


class Predictions(TypedDict):
    predictions: list[Prediction]
    """The top-k, best first."""
    probabilities: NotRequired[list[float]]
    """Every class's probability, by index: only when the request asked for it."""


class InputError(TypedDict):
    code: str
    """A key of ``contract.errors.INPUT_ERROR_STATUS``."""
    message: str


class Failure(TypedDict):
    error: InputError


Result = Predictions | Failure


class WorkerTiming(TypedDict):
    """Where one worker request's time went inside the worker, in milliseconds: what the
    gateway reports per request (``Server-Timing``, the ``timing`` of ``/v1`` answers) and
    ``bench.e2e`` adds up."""

    wait_ms: float
    """Waiting for the machine's CPUs while another model's batch computed (``cpu_slots``)."""
    decode_ms: float
    """Headers checked, images decoded upright, resized, cropped and normalised."""
    model_ms: float
    """The model on the batch (padded to its bucket), softmax and top-k."""
    total_ms: float
    """The handler's whole call, from TorchServe's hand-off to the answer it returns."""


class WorkerAnswer(TypedDict):
    model: str
    runtime: str
    compiled_graphs: int
    """Graphs compiled in the worker's process so far: a load test's proof that nothing
    compiled while it measured."""
    results: list[Result]
    timing: NotRequired[WorkerTiming]
