"""The Open Inference Protocol's names and JSON objects, as the REST spec defines them
(``kserve/open-inference-protocol``, ``inference_rest.md``), plus what this gateway serves: one
version per model, two inputs (encoded images, or preprocessed pixels), one output."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

V2_PREFIX = "/v2"
MODEL_VERSION = "1"
"""The only version of each model: the archive the worker loaded."""
SERVER_NAME = "attention-serving"
EXTENSIONS = ["binary_tensor_data", "classification"]

HEADER_LENGTH = "Inference-Header-Content-Length"
"""Binary tensor data extension: the length of the JSON object the binary data follows."""
BINARY_DATA_SIZE = "binary_data_size"
BINARY_DATA = "binary_data"
BINARY_DATA_OUTPUT = "binary_data_output"
CLASSIFICATION = "classification"
TIMEOUT = "timeout"
MAX_TIMEOUT_US = 2**64 - 1
"""Triton's ``timeout`` is a uint64 of microseconds; past it, a number is refused (422)."""
"""A request parameter: microseconds the client waits; the request's deadline."""

IMAGES_INPUT = "images"
"""BYTES ``[N]``: one encoded JPEG, PNG or WebP per element (base64 strings in JSON)."""
PIXELS_INPUT = "pixel_values"
"""FP32 ``[N, 3, S, S]``: images already through the eval pipeline (resize, crop, normalise)."""
PROBABILITIES_OUTPUT = "probabilities"
"""FP32 ``[N, classes]``: the softmax; with ``classification: k``, BYTES ``[N, k]`` instead."""
BYTES = "BYTES"
FP32 = "FP32"
INPUT_TYPES = {IMAGES_INPUT: BYTES, PIXELS_INPUT: FP32}
"""Each input the models take -> its datatype."""


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its definitions written in place, for an OpenAPI document
    that does not hold them (a request body the route reads itself)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


class V2Error(BaseModel):
    error: str


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for a dimension of variable (or not yet known) size")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str = Field(
        description="pytorch_<runtime>, and _<precision> when that is not fp32 (pytorch_aot_int8)"
    )
    inputs: list[TensorMetadata] = Field(
        description=f"send one of them: {IMAGES_INPUT} or {PIXELS_INPUT}"
    )
    outputs: list[TensorMetadata]
    parameters: dict[str, str] = Field(
        default_factory=dict, description="runtime and precision, as the worker reports them"
    )


class _Open(BaseModel):
    """Parameters are open-ended in the spec: names we do not use are accepted and ignored."""

    model_config = ConfigDict(extra="allow")


class InputParameters(_Open):
    binary_data_size: int | None = Field(None, ge=0)


class OutputParameters(_Open):
    binary_data: bool | None = None
    classification: int | None = None


class RequestParameters(_Open):
    timeout: int | None = Field(None, description="microseconds; 0: the model's default deadline")
    binary_data_output: bool | None = None


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: InputParameters = Field(default_factory=InputParameters)
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    name: str
    parameters: OutputParameters = Field(default_factory=OutputParameters)


class InferenceRequest(BaseModel):
    """``model_name`` (which some clients send) and other extra fields are ignored."""

    id: str | None = None
    parameters: RequestParameters = Field(default_factory=RequestParameters)
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]
