"""The one small interface the gateway needs from whatever runs the model, and its errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, Discriminator, Field, Tag, TypeAdapter, ValidationError

from contract.errors import INPUT_ERROR_STATUS
from model_store.zoo.precision import DEFAULT_PRECISION

from ..inputs import Upload
from ..schemas import READY, EndpointStatus, ImageResult, WorkerTiming


class BackendError(Exception):
    """A whole batch failed. ``reached``: the backend received it (so its duration and size are
    real observations for the metrics)."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, reached: bool) -> None:
        super().__init__(message)
        self.reached = reached


class BackendUnavailable(BackendError):
    """The backend cannot take work now (down, restarting, overloaded); retry after a while."""

    def __init__(self, message: str, retry_after_s: float = 1.0, *, reached: bool = False) -> None:
        super().__init__(message, reached=reached)
        self.retry_after_s = retry_after_s


class BackendTimeout(BackendError):
    """The backend took the batch and did not answer within the configured timeout."""

    status = 504
    code = "backend_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, reached=True)


class BadBackendResponse(BackendError):
    """The backend answered, but not with one well-formed result per image."""

    status = 502
    code = "bad_backend_response"

    def __init__(self, message: str) -> None:
        super().__init__(message, reached=True)


class WorkerResult(ImageResult):
    """One input's answer from a worker: the top-k, and the full softmax when asked for;
    ``timing``: where its batch's time went in the worker, when the worker said."""

    probabilities: list[Annotated[float, Field(ge=0, le=1)]] | None = None
    timing: WorkerTiming | None = None


def with_timing(results: list[BatchResult], timing: object) -> list[BatchResult]:
    """``results`` each carrying the worker's ``timing`` of their batch (a malformed or
    missing timing is left out: it reports, it does not decide)."""
    try:
        checked = WorkerTiming.model_validate(timing)
    except ValidationError:
        return results
    for result in results:
        if isinstance(result, WorkerResult):
            result.timing = checked
    return results


class InputError(BaseModel):
    code: Literal[tuple(INPUT_ERROR_STATUS)]  # type: ignore[valid-type]
    """Only codes whose status the contract declares: an unknown one is a malformed answer."""
    message: str


class InputFailure(BaseModel):
    """One input the worker could not answer; the rest of its batch is answered."""

    error: InputError


BatchResult = WorkerResult | InputFailure
"""One input's entry in a checked worker answer (``contract.answers.Result``)."""
_RESULTS = TypeAdapter(
    list[
        Annotated[
            Annotated[WorkerResult, Tag("predictions")] | Annotated[InputFailure, Tag("error")],
            Discriminator(lambda entry: "error" if "error" in entry else "predictions"),
        ]
    ]
)
"""An entry with ``error`` is judged as a failure, any other as predictions: each malformed
entry is named by what is wrong with it, not by both readings."""


def check_results(results: object, count: int, probabilities: bool = False) -> list[BatchResult]:
    """One well-formed entry per input (finite scores in [0, 1], a known error code, and the
    probabilities when asked for), or ``BadBackendResponse``: the gateway's one check of what a
    worker answered, whose models travel on to the routes."""
    if not isinstance(results, list) or len(results) != count:
        got = len(results) if isinstance(results, list) else type(results).__name__
        raise BadBackendResponse(f"the worker returned {got} results for {count} inputs")
    try:
        parsed = _RESULTS.validate_python(results)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"][:1] + first["loc"][2:]))
        raise BadBackendResponse(f"malformed worker result at {where}: {first['msg']}") from None
    if probabilities and any(
        isinstance(entry, WorkerResult) and entry.probabilities is None for entry in parsed
    ):
        raise BadBackendResponse("the worker left out the probabilities asked for")
    return parsed


class WorkerFacts(BaseModel):
    """What a loaded worker reports about itself (the classifier's ``info``, TorchServe's
    batching): the gateway checks its batching against it, exports the runtime and lists the
    model's size (the gateway has no torch to count it)."""

    runtime: str = Field(description="aot, jit, openvino or eager: what actually runs the model")
    precision: str = Field(DEFAULT_PRECISION, description="fp32, bf16 or int8: what it computes in")
    weight_packing: str | None = Field(
        None, description="at_load, at_build or none: when its weights were packed for the CPU"
    )
    threads: int | None = Field(None, description="intra-op threads of a batch")
    cpu_slots: int | None = Field(
        None, description="batches computing at once on the CPUs its worker shares"
    )
    batch_buckets: list[int] = Field(min_length=1)
    batch_size: int = Field(1, description="TorchServe batchSize: 1 when the gateway batches")
    parameters: int | None = Field(None, description="the loaded model's parameter count")
    attention_parameters: int | None = Field(None, description="of which in attention layers")
    input_size: int | None = Field(None, description="the side of the square input it takes")
    num_classes: int | None = Field(None, description="the length of its probabilities")
    compiled_graphs: int | None = Field(
        None, description="graphs compiled in its process so far, as of its last answer"
    )


def serving_mismatch(facts: WorkerFacts, max_batch_size: int) -> str | None:
    """Why the gateway's batching and this worker's disagree (None: they agree)."""
    if facts.batch_size != 1:
        return (
            f"the worker's TorchServe batchSize is {facts.batch_size}: it would merge the "
            "gateway's batches again; build the archive with batch_size 1 (the default)"
        )
    if max_batch_size > (largest := max(facts.batch_buckets)):
        return (
            f"the gateway's max_batch_size {max_batch_size} exceeds the worker's largest warmed "
            f"batch bucket {largest}; lower GATEWAY_MAX_BATCH_SIZE or rebuild the archive "
            "with larger buckets"
        )
    return None


class Backend(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def classify(
        self, model: str, inputs: Sequence[Upload], top_k: int, probabilities: bool = False
    ) -> list[BatchResult]:
        """One entry per input, in order, as ``check_results`` made it: its predictions (with
        the probabilities when asked for) or its error. Raises a ``BackendError`` for the whole
        batch."""
        ...

    async def readiness(self) -> dict[str, str]:
        """Per served model: ``"ready"`` or why not (a worker whose batching disagrees with the
        gateway's, see ``serving_mismatch``, is not ready)."""
        ...

    def worker_facts(self) -> dict[str, WorkerFacts]:
        """Per model whose worker has reported: what it says about itself (runtime, size)."""
        ...

    def endpoints(self) -> dict[str, list[EndpointStatus]]:
        """Per served model: every place it is served, as of the last readiness check."""
        ...

    def ready_workers(self, model: str) -> int:
        """The workers ready for ``model`` over every ready endpoint (the batcher runs
        ``max_concurrent_batches`` per ready worker: it asks on every submission, so cheaply)."""
        ...


def ready_endpoints(statuses: Sequence[EndpointStatus]) -> int:
    """How many of a model's endpoints (``Backend.endpoints()[model]``) are ready."""
    return sum(status.status == READY for status in statuses)


def one_endpoint(name: str, states: dict[str, str]) -> dict[str, list[EndpointStatus]]:
    """``endpoints()`` of a backend that serves each model in one place."""
    return {
        model: [EndpointStatus(endpoint=name, status=state, workers=int(state == READY))]
        for model, state in states.items()
    }
