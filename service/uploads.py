"""Reading and validating uploads before anything is queued.

Limits are enforced while reading (a lying Content-Length cannot get more bytes in, a stalled
upload is cut off after ``upload_timeout_s``), image headers are checked for format, pixels and
aspect ratio before any decoding (bombs are refused at 413), and truncated files are caught from
their structure (400).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from model_store.worker.images import FORMATS, ImageError, ImageLimits, validate

from .errors import CLIENT_CLOSED, IMAGE_ERROR_STATUS, ApiError
from .settings import GatewaySettings

IMAGE_CONTENT_TYPES = set(FORMATS.values())
PART_CONTENT_TYPES = IMAGE_CONTENT_TYPES | {"application/octet-stream", ""}
EXTRA_FORM_FIELDS = 16
"""Non-file form fields tolerated besides the images."""


InputKind = Literal["image", "tensor"]


@dataclass(frozen=True)
class Upload:
    """One validated input: an encoded image, or (``tensor``) a preprocessed one as float32
    bytes (``model_store.worker.protocol.TENSOR_FIELD_PREFIX``); ``pixels``: what it costs a
    batch."""

    data: bytes
    pixels: int
    kind: InputKind = "image"


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, "payload_too_large", f"request body of {int(declared):,} bytes exceeds {limit:,}"
        )
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(
                        413, "payload_too_large", f"request body exceeds {limit:,} bytes"
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408, "upload_timeout", f"the request body did not arrive within {timeout_s:g} s"
        ) from None
    except ClientDisconnect:
        raise ApiError(CLIENT_CLOSED, "client_closed_request", "the client went away") from None
    return b"".join(chunks)


async def read_images(request: Request, settings: GatewaySettings) -> list[Upload]:
    """The uploaded images, in order: multipart ``file`` fields, or one raw image body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in IMAGE_CONTENT_TYPES and content_type != "multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            "send multipart/form-data with 'file' fields or a raw body of type "
            f"{', '.join(sorted(IMAGE_CONTENT_TYPES))}; got {content_type or 'none'!r}",
        )
    body = await read_body(request, settings.max_upload_bytes, settings.upload_timeout_s)
    if content_type != "multipart/form-data":
        images = [body]
    else:
        images = await _multipart_files(request, body, settings.max_images_per_request)
    return [validate_image(data, index, settings.limits) for index, data in enumerate(images)]


def too_many_images(count: int, limit: int) -> ApiError:
    return ApiError(413, "too_many_images", f"{count} images in one request, limit {limit}")


async def _multipart_files(request: Request, body: bytes, max_images: int) -> list[bytes]:
    boundary = request.headers.get("content-type", "").partition("boundary=")[2].strip('"; ')
    parts = body.count(b"--" + boundary.encode("latin-1")) - 1 if boundary else 0
    if parts > max_images + EXTRA_FORM_FIELDS:  # counted before the parser would refuse it
        raise too_many_images(parts, max_images)
    parser = MultiPartParser(  # over the body already read within the limits
        request.headers,
        _stream(body),
        max_files=max_images + EXTRA_FORM_FIELDS,
        max_fields=max_images + EXTRA_FORM_FIELDS,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, "malformed_multipart", exc.message) from None
    try:
        return await _image_parts(form, max_images)
    finally:
        await form.close()


async def _stream(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


async def _image_parts(form: FormData, max_images: int) -> list[bytes]:
    files = form.getlist("file")
    if not files:
        raise ApiError(
            422,
            "invalid_parameters",
            "no 'file' field: send each image as a form field named 'file'",
        )
    if len(files) > max_images:
        raise too_many_images(len(files), max_images)
    images = []
    for index, part in enumerate(files):
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


def validate_image(data: bytes, index: int, limits: ImageLimits) -> Upload:
    try:
        image = validate(data, limits)
    except ImageError as exc:
        raise ApiError(IMAGE_ERROR_STATUS[exc.code], exc.code, f"image {index}: {exc}") from None
    return Upload(data, image.width * image.height)
