"""Reading and validating uploads before anything is queued.

Limits are enforced while reading (a lying Content-Length cannot get more bytes in, a stalled
or trickling upload is cut off by a minimum rate after its first second and by
``upload_timeout_s``), image headers are checked for format, pixels and
aspect ratio before any decoding (bombs are refused at 413), and truncated files are caught from
their structure (400).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from fastapi import Request
from starlette.requests import ClientDisconnect

from contract.errors import INPUT_ERROR_STATUS
from contract.images import FORMATS, ImageError, ImageLimits, validate

from . import timing
from .errors import CLIENT_CLOSED, ApiError, unavailable
from .form_data import MalformedForm, TooManyParts, parse_form
from .inputs import Upload
from .settings import GatewaySettings

IMAGE_CONTENT_TYPES = set(FORMATS.values())
MULTIPART = "multipart/form-data"
PART_CONTENT_TYPES = IMAGE_CONTENT_TYPES | {"application/octet-stream", ""}
EXTRA_FORM_FIELDS = 16
"""Non-file form fields tolerated besides the images."""


UPLOAD_GRACE_S = 1.0
"""A body's first second is free of the minimum rate: connections start slowly."""


async def read_body(
    request: Request, settings: GatewaySettings, slow_down: Callable[[], bool]
) -> bytes:
    """The body within ``max_upload_bytes``, ``upload_timeout_s`` and, after its first second,
    ``min_upload_rate_bps`` on average (408 otherwise). Still arriving after the first second,
    it asks ``slow_down`` for one of the places kept for slow uploads (503 when none is free)."""
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, "payload_too_large", f"request body of {int(declared):,} bytes exceeds {limit:,}"
        )
    loop = asyncio.get_running_loop()
    started = loop.time()
    chunks, size, slow = [], 0, False
    stream = request.stream()
    reading: asyncio.Future[bytes] | None = None  # never cancelled but to give up the body
    try:
        while True:
            total_due = started + settings.upload_timeout_s
            rate_due = (
                started
                + UPLOAD_GRACE_S
                + (
                    size / settings.min_upload_rate_bps
                    if settings.min_upload_rate_bps
                    else math.inf
                )
            )
            grace_due = started + UPLOAD_GRACE_S if not slow else math.inf
            due = min(total_due, rate_due, grace_due)
            reading = reading or asyncio.ensure_future(anext(stream))
            done, _ = await asyncio.wait({reading}, timeout=max(0.0, due - loop.time()))
            if not done:
                if due == grace_due < min(rate_due, total_due):  # still arriving, fast enough
                    if not slow_down():
                        raise unavailable(
                            "too many uploads arriving slowly; retry shortly",
                            1.0,
                            "too_many_uploads",
                        )
                    slow = True
                    continue
                raise _too_slow(settings, rate=due == rate_due)
            try:
                chunk = reading.result()
            except StopAsyncIteration:
                break
            finally:
                reading = None
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "payload_too_large", f"request body exceeds {limit:,} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(CLIENT_CLOSED, "client_closed_request", "the client went away") from None
    finally:
        if reading is not None:
            reading.cancel()
    return b"".join(chunks)


def _too_slow(settings: GatewaySettings, rate: bool) -> ApiError:
    if rate:
        message = (
            f"the request body arrived slower than {settings.min_upload_rate_bps:g} bytes/s "
            "after its first second"
        )
    else:
        message = f"the request body did not arrive within {settings.upload_timeout_s:g} s"
    return ApiError(408, "upload_timeout", message)


async def read_images(
    request: Request,
    settings: GatewaySettings,
    slow_down: Callable[[], bool],
    decoding: asyncio.Semaphore,
) -> list[Upload]:
    """The uploaded images, in order: multipart ``file`` fields, or one raw image body, parsed
    and validated off the event loop (a structure walk may take milliseconds), ``decoding``
    bounding the bodies parsed at once."""
    content_type = request.headers.get("content-type", "")
    kind = content_type.split(";")[0].strip().lower()
    if kind not in IMAGE_CONTENT_TYPES and kind != MULTIPART:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send multipart/form-data with 'file' fields or a raw body of type "
            f"{', '.join(sorted(IMAGE_CONTENT_TYPES))}; got {kind or 'none'!r}",
        )
    with timing.part(request, "read"):
        body = await read_body(request, settings, slow_down)
    with timing.part(request, "validate"):
        async with decoding:
            return await asyncio.to_thread(uploads_in, body, content_type, settings)


def uploads_in(body: bytes, content_type: str, settings: GatewaySettings) -> list[Upload]:
    """The images of a body read whole: its ``file`` parts (multipart) or itself, each
    validated from its header."""
    if content_type.split(";")[0].strip().lower() == MULTIPART:
        images = form_images(body, content_type, settings.max_images_per_request)
    else:
        images = [body]
    return validate_images(images, settings.limits)


def too_many_images(count: int, limit: int) -> ApiError:
    return ApiError(413, "too_many_images", f"{count} images in one request, limit {limit}")


def form_images(body: bytes, content_type: str, max_images: int) -> list[bytes]:
    """The ``file`` parts of a multipart body, in order (other fields are ignored, up to
    ``EXTRA_FORM_FIELDS`` of them)."""
    try:
        parts = parse_form(body, content_type, max_images + EXTRA_FORM_FIELDS)
    except TooManyParts as exc:
        raise too_many_images(exc.count, max_images) from None
    except MalformedForm as exc:
        raise ApiError(400, "malformed_multipart", str(exc)) from None
    files = [part for part in parts if part.name == "file"]
    if not files:
        raise ApiError(
            422,
            "invalid_parameters",
            "no 'file' field: send each image as a form field named 'file'",
        )
    if len(files) > max_images:
        raise too_many_images(len(files), max_images)
    for index, part in enumerate(files):
        if part.filename is None:
            raise ApiError(
                422, "invalid_parameters", f"'file' field {index} is text, not a file upload"
            )
        if part.content_type not in PART_CONTENT_TYPES:
            raise ApiError(
                415,
                "unsupported_media_type",
                f"image {index}: content type {part.content_type!r} is not an image type",
            )
    return [part.data for part in files]


def validate_images(images: list[bytes], limits: ImageLimits) -> list[Upload]:
    return [validate_image(data, index, limits) for index, data in enumerate(images)]


def validate_image(data: bytes, index: int, limits: ImageLimits) -> Upload:
    try:
        image = validate(data, limits)
    except ImageError as exc:
        raise ApiError(INPUT_ERROR_STATUS[exc.code], exc.code, f"image {index}: {exc}") from None
    return Upload(data, image.width * image.height)
