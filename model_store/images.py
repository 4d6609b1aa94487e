"""Image decoding for serving: format check, pixel limit before decoding, mode conversion.

Decompression bombs are refused from the header alone: ``Image.open`` reads only the header,
so the pixel count is known before a single pixel is decoded.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
DEFAULT_MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """An image that cannot be served; ``code`` says why (mapped to an HTTP status upstream)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read the header only: format and size are checked, no pixel is decoded yet."""
    if not data:
        raise ImageError("undecodable_image", "empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("image_too_large", str(exc)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError("undecodable_image", f"cannot identify image: {exc}") from None
    if image.format not in FORMATS:
        raise ImageError(
            "unsupported_image_type",
            f"{image.format} images are not served; send one of {', '.join(FORMATS)}",
        )
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            "image_too_large",
            f"{width}x{height} = {width * height:,} pixels exceeds {max_pixels:,}",
        )
    return image


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 0) -> Image.Image:
    """Decode to 8-bit RGB. JPEGs decode at a reduced DCT scale when the shorter side stays
    >= ``min_side`` (the resize target): the same result for the model, several times less work."""
    image = open_image(data, max_pixels)
    if min_side and image.format == "JPEG":
        image.draft("RGB", (min_side, min_side))
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError("undecodable_image", f"corrupt or truncated image: {exc}") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: 16-bit to 8-bit, alpha composited on white, CMYK/P/L converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey (PNG): keep the high byte
        pixels = np.asarray(image).astype(np.int64) >> 8
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" or image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def check_complete(image_format: str | None, data: bytes) -> None:
    """Refuse files cut short (the usual broken upload) from their structure, without decoding:
    a JPEG ends with an EOI marker, a PNG with its IEND chunk, a WebP is as long as its RIFF
    header says."""
    truncated = (
        (image_format == "JPEG" and b"\xff\xd9" not in data[-1024:])
        or (image_format == "PNG" and b"IEND" not in data[-64:])
        or (image_format == "WEBP" and int.from_bytes(data[4:8], "little") + 8 > len(data))
    )
    if truncated:
        raise ImageError(
            "undecodable_image", f"truncated {image_format} file ({len(data):,} bytes)"
        )
