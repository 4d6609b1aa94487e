"""The codes a worker reports for one input it could not answer, and the HTTP status each
becomes at the gateway: a worker writes ``{"error": {"code", "message"}}`` in that input's place
(``contract.answers``), and a code missing here is a malformed answer (502), never a guess."""

from __future__ import annotations

UNDECODABLE_IMAGE = "undecodable_image"
"""Not an image of a served format, or corrupt or truncated."""
IMAGE_TOO_LARGE = "image_too_large"
"""Past the pixel or aspect-ratio limits, or more than the worker's memory can decode."""
UNSUPPORTED_IMAGE_TYPE = "unsupported_image_type"
"""An image format (or animation) that is not served."""
BATCH_TOO_LARGE = "batch_too_large"
"""The batch's images together exceed what the worker decodes at once."""
INVALID_TOP_K = "invalid_top_k"
INVALID_TENSOR = "invalid_tensor"
"""A preprocessed input of the wrong size, or with values the eval pipeline never makes."""
NON_FINITE_OUTPUT = "non_finite_output"
"""The model's output for this input was not finite."""

INPUT_ERROR_STATUS: dict[str, int] = {
    UNDECODABLE_IMAGE: 400,
    INVALID_TENSOR: 400,
    IMAGE_TOO_LARGE: 413,
    BATCH_TOO_LARGE: 413,
    UNSUPPORTED_IMAGE_TYPE: 415,
    INVALID_TOP_K: 422,
    NON_FINITE_OUTPUT: 422,
}
"""Every code a worker may report -> the status the gateway answers with."""
