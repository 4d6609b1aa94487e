"""Response models: they make the OpenAPI schema exact."""

from __future__ import annotations

from pydantic import BaseModel, Field

READY = "ready"
"""A model's state when it has a worker that can take requests (anything else says why not)."""
NOT_READY = "not_ready"
"""What the public probe says of anything else: why not is behind the API key (per model)."""


class Prediction(BaseModel):
    index: int = Field(description="class index")
    label: str
    score: float = Field(ge=0, le=1, description="softmax probability")


class ImageResult(BaseModel):
    predictions: list[Prediction]


class WorkerTiming(BaseModel):
    """Where a batch's time went in its worker (``contract.answers.WorkerTiming``)."""

    wait_ms: float = Field(ge=0, description="waiting for the CPUs while another model computed")
    decode_ms: float = Field(ge=0, description="headers checked, images decoded and preprocessed")
    model_ms: float = Field(ge=0, description="the model on the batch, softmax and top-k")
    total_ms: float = Field(ge=0, description="the worker's whole call")


class Timing(BaseModel):
    read_ms: float = Field(0.0, description="reading the request body")
    validate_ms: float = Field(0.0, description="parsing it and checking each image's header")
    queue_ms: float = Field(description="longest wait of this request's images in the batcher")
    backend_ms: float = Field(description="longest backend call among this request's batches")
    worker: WorkerTiming | None = Field(
        None, description="where that backend call's time went in its worker, as it reported"
    )
    total_ms: float
    batch_sizes: list[int] = Field(description="size of the batch each image travelled in")


class ClassifyResponse(BaseModel):
    model: str
    results: list[ImageResult] = Field(description="one per uploaded image, in upload order")
    timing: Timing


class ModelInfo(BaseModel):
    name: str
    architecture: str
    attention: str
    parameters: int | None = Field(
        default=None, description="as the model's worker counts them; null until it has reported"
    )
    attention_parameters: int | None = Field(
        default=None, description="of which in attention layers; null until reported"
    )
    status: str = Field(description='"ready", or why not')
    runtime: str | None = Field(
        default=None,
        description="what runs the model in its worker (aot, jit, openvino or eager); "
        "null until the worker has reported",
    )
    precision: str | None = Field(
        default=None,
        description="what it computes in: fp32 (the model's own answers), bf16 or int8 "
        "(approximate: the archive's fidelity gate bounds how far); null until reported",
    )
    weight_packing: str | None = Field(
        default=None,
        description="when its weights were packed for the CPU's kernels: at_load (by the "
        "serving process, for its CPU and threads), at_build (by the archive's builder: slower "
        "where the two differ) or none (eager); null until reported",
    )
    threads: int | None = Field(
        default=None, description="intra-op threads each batch runs on; null until reported"
    )
    cpu_slots: int | None = Field(
        default=None,
        description="batches that may compute at once on the CPUs its worker shares with the "
        "other models' workers; null when not shared or not reported",
    )
    endpoints: int = Field(0, description="ready endpoints (TorchServes) serving it")


class ModelList(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str


class EndpointStatus(BaseModel):
    """One place a model is served: a TorchServe the gateway found, or its own process."""

    endpoint: str = Field(description="the TorchServe's inference URL, or the backend's name")
    status: str = Field(description='"ready", or why not, as of the last check')
    workers: int = Field(0, description="its workers ready for the model (each takes a batch)")
    in_flight: int = Field(0, description="batches sent to it and not yet answered")
    batches: int = Field(0, description="batches it answered since the gateway found it")
    failures: int = Field(0, description="batches that failed on it since then")
    busy_seconds: float = Field(0.0, description="the summed duration of those batches")


class Readiness(BaseModel):
    status: str = Field(description='"ready" (at least one model is) or "not_ready"')
    backend: str
    models: dict[str, str] = Field(
        description='per model: "ready" or "not_ready" (why not: GET /v1/models/{model}/ready)'
    )
    endpoints: dict[str, int] = Field(description="per model: how many endpoints are ready")


class ModelReadiness(BaseModel):
    model: str
    ready: bool
    status: str = Field(description='"ready", or why not')
    endpoints: list[EndpointStatus] = Field(description="every endpoint the gateway knows")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
