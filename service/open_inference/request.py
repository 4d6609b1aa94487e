"""Reading an inference request (a JSON object, optionally followed by binary tensor data) into
validated inputs and the outputs it wants (``body`` reads the body, ``tensors`` its tensors;
``answer`` writes the answer).

Every way a request can be wrong is a 400 or 422 that says what is wrong, decided before
anything is queued: a bad request never reaches a batch that others share."""

from __future__ import annotations

from dataclasses import dataclass

from contract.images import ImageLimits
from contract.protocol import MAX_TOP_K

from ..errors import ApiError, unavailable
from ..inputs import Upload
from ..uploads import validate_image
from .body import malformed, parse_request, split_body
from .protocol import (
    BYTES,
    FP32,
    IMAGES_INPUT,
    INPUT_TYPES,
    MAX_TIMEOUT_US,
    PIXELS_INPUT,
    PROBABILITIES_OUTPUT,
    InferenceRequest,
)
from .tensors import base64_elements, batch_count, binary_part, byte_elements, pixel_uploads


@dataclass(frozen=True)
class WantedOutput:
    name: str
    classification: int | None
    """``k`` when the top-k are asked for as ``"score:index:label"`` strings."""
    binary: bool


@dataclass(frozen=True)
class DecodedRequest:
    id: str | None
    uploads: list[Upload]
    outputs: list[WantedOutput]
    timeout_ms: float | None
    """The request's own deadline (its ``timeout`` parameter), if it set one."""

    @property
    def top_k(self) -> int:
        return max((o.classification or 1 for o in self.outputs), default=1)

    @property
    def probabilities(self) -> bool:
        return any(o.classification is None for o in self.outputs)


def decode_request(
    body: bytes,
    header_length: str | None,
    limits: ImageLimits,
    max_images: int,
    input_size: int | None,
) -> DecodedRequest:
    """The validated inputs of one request. ``input_size``: the side of the preprocessed
    images the model takes (``None`` while its worker has not said)."""
    header, binary = split_body(body, header_length)
    request = parse_request(header)
    if len(request.inputs) != 1 or request.inputs[0].name not in INPUT_TYPES:
        names = [i.name for i in request.inputs]
        raise malformed(
            f"send exactly one input, {IMAGES_INPUT!r} ({BYTES}) or {PIXELS_INPUT!r} ({FP32}); "
            f"got {names}"
        )
    [tensor] = request.inputs
    outputs = _wanted_outputs(request)  # parameters first: they cost nothing to check
    timeout = request.parameters.timeout
    if timeout is not None and not 0 <= timeout <= MAX_TIMEOUT_US:
        raise ApiError(
            422,
            "invalid_parameters",
            f"timeout must be >= 0 µs and at most {MAX_TIMEOUT_US} (uint64), got "
            f"{str(timeout)[:24]}{'...' if len(str(timeout)) > 24 else ''}",
        )
    count = batch_count(tensor, max_images)
    raw = binary_part(tensor, binary)
    if tensor.name == IMAGES_INPUT:
        images = byte_elements(raw, count) if raw is not None else base64_elements(tensor)
        uploads = [validate_image(data, index, limits) for index, data in enumerate(images)]
    else:
        if input_size is None:
            raise unavailable("the model's worker is not ready; retry shortly", 5.0)
        uploads = pixel_uploads(tensor, raw, count, input_size)
    return DecodedRequest(request.id, uploads, outputs, timeout / 1000 if timeout else None)


def _wanted_outputs(request: InferenceRequest) -> list[WantedOutput]:
    binary_default = bool(request.parameters.binary_data_output)
    if request.outputs is None:
        return [WantedOutput(PROBABILITIES_OUTPUT, None, binary_default)]
    wanted = []
    for output in request.outputs:
        if output.name != PROBABILITIES_OUTPUT:
            raise malformed(
                f"unknown output {output.name!r}; the output is {PROBABILITIES_OUTPUT!r}"
            )
        k = output.parameters.classification or None  # 0: no classification (Triton's)
        if k is not None and not 1 <= k <= MAX_TOP_K:
            raise ApiError(
                422, "invalid_parameters", f"classification must be in 1..{MAX_TOP_K}, got {k}"
            )
        binary = output.parameters.binary_data
        wanted.append(WantedOutput(output.name, k, binary_default if binary is None else binary))
    if len({o.name for o in wanted}) != len(wanted):
        raise malformed("an output is asked for twice (answers are told apart by name)")
    return wanted
