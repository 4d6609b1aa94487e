"""Reading and validating uploads before anything is queued.

Limits are enforced while reading (a lying Content-Length cannot get more bytes in), image
headers are checked for format and pixel count before any decoding (decompression bombs are
refused at 413), and truncated files are caught from their structure (400).
"""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from model_store.images import ImageError, check_complete, open_image

from .errors import IMAGE_ERROR_STATUS, ApiError
from .settings import GatewaySettings

IMAGE_CONTENT_TYPES = {"image/jpeg", "image/png", "image/webp"}
PART_CONTENT_TYPES = IMAGE_CONTENT_TYPES | {"application/octet-stream", ""}


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, "payload_too_large", f"request body of {int(declared):,} bytes exceeds {limit:,}"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload_too_large", f"request body exceeds {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_images(request: Request, settings: GatewaySettings) -> list[bytes]:
    """The uploaded images, in order: multipart ``file`` fields, or one raw image body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in IMAGE_CONTENT_TYPES and content_type != "multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            "send multipart/form-data with 'file' fields or a raw body of type "
            f"{', '.join(sorted(IMAGE_CONTENT_TYPES))}; got {content_type or 'none'!r}",
        )
    body = await read_body(request, settings.max_upload_bytes)
    if content_type != "multipart/form-data":
        images = [body]
    else:
        images = await _multipart_files(request, body, settings.max_images_per_request)
    for index, data in enumerate(images):
        validate_image(data, index, settings.max_pixels)
    return images


async def _multipart_files(request: Request, body: bytes, max_images: int) -> list[bytes]:
    request._body = body  # the form parser reads the already-limited body
    try:
        form = await request.form(max_files=max_images + 1, max_fields=max_images + 16)
    except (MultiPartException, HTTPException) as exc:  # Starlette wraps parser errors in a 400
        raise ApiError(
            400, "malformed_multipart", getattr(exc, "detail", None) or str(exc)
        ) from None
    parts = form.getlist("file")
    if not parts:
        raise ApiError(
            422,
            "invalid_parameters",
            "no 'file' field: send each image as a form field named 'file'",
        )
    if len(parts) > max_images:
        raise ApiError(
            413, "too_many_images", f"{len(parts)} images in one request, limit {max_images}"
        )
    images = []
    for index, part in enumerate(parts):
        if not isinstance(part, UploadFile):
            raise ApiError(
                422, "invalid_parameters", f"'file' field {index} is text, not a file upload"
            )
        declared = (part.content_type or "").split(";")[0].strip().lower()
        if declared not in PART_CONTENT_TYPES:
            raise ApiError(
                415,
                "unsupported_media_type",
                f"image {index}: content type {declared!r} is not an image type",
            )
        images.append(await part.read())
    return images


def validate_image(data: bytes, index: int, max_pixels: int) -> None:
    try:
        image = open_image(data, max_pixels)
        check_complete(image.format, data)
    except ImageError as exc:
        raise ApiError(IMAGE_ERROR_STATUS[exc.code], exc.code, f"image {index}: {exc}") from None
