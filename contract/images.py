"""What an upload may be, refused from its header and file structure alone (no pixel decoded).

Both tiers call :func:`validate`: the gateway on every upload (so nothing it forwards can cost a
worker more than the limits), the worker on every input (it can be called directly). Every
refusal is an :class:`ImageError` with a code of ``contract.errors`` (its HTTP status is declared
there) and a message written for the client: never an exception's repr or an object's address.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .errors import IMAGE_TOO_LARGE, UNDECODABLE_IMAGE, UNSUPPORTED_IMAGE_TYPE

FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
"""Served formats (Pillow's name -> media type)."""
SERVED = ", ".join(FORMATS)

# Formats clients send that we do not serve, told apart by their first bytes (415, not 400).
_OTHER_SIGNATURES = {
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"BM": "BMP",
    b"\x00\x00\x01\x00": "ICO",
    b"8BPS": "PSD",
    b"\xff\x0a": "JPEG XL",
    b"\x00\x00\x00\x0cJXL ": "JPEG XL",
    b"\x00\x00\x00\x0cjP  ": "JPEG 2000",
    b"%PDF": "PDF",
}
MULTI_PICTURE_JPEG = "MPO"
"""Pillow's name for a JPEG carrying more pictures after the first (MPF: Ultra HDR gain maps of
current phones, stereo cameras): its first picture is the primary one, and the one served."""
MAX_JPEG_SEGMENTS = 512
"""Marker segments of a JPEG's first picture: a photo has tens (APPn, ICC chunks, tables, and a
progressive one two per scan); a file of millions of empty ones would keep the walk busy for
seconds."""
MAX_JPEG_SCANS = 100
"""Scans of a JPEG. libjpeg decodes every scan of a progressive JPEG over the whole picture, so
decoding costs scans x pixels: a 1.3 MB 36-megapixel file whose last scan is repeated 20,000
times decodes for minutes. Encoders write 1 (baseline), 3 (one per component) or about 10
(progressive); libjpeg-turbo's own tools refuse past a limit of this kind for this attack."""
MAX_PNG_CHUNKS = 8192
"""A PNG's chunks: a 10 MiB image written in 8 KiB IDAT chunks (libpng's size) has about 1,300."""
MAX_PNG_METADATA_CHUNKS = {b"tEXt": 16, b"zTXt": 16, b"iTXt": 16, b"iCCP": 1}
"""Metadata chunks of a PNG, per kind. Pillow inflates the compressed ones while opening the
file, up to 1 MiB each (a 66 KB file of 63 of them cost 0.21 s and 64 MB to open): editors write
a few texts (XMP, comments, software), and the PNG spec allows one ICC profile."""
MAX_PNG_TEXT_BYTES = 4 * 2**20
"""What a PNG's text may inflate to in all (Pillow's ``MAX_TEXT_MEMORY``, 64 MiB by default):
set for both tiers, which both import this module before opening any image."""
PngImagePlugin.MAX_TEXT_MEMORY = MAX_PNG_TEXT_BYTES
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
"""The next marker after entropy-coded data: 0xFF there is always stuffed (FF 00) or a restart
marker (FF D0-D7), and fill bytes (FF FF) may precede a marker."""
_ISO_BMFF_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF"}


@dataclass(frozen=True)
class ImageLimits:
    """What one image may cost; the gateway and the worker read the same defaults from here.

    ``max_aspect_ratio`` bounds the resize: the shorter side goes to 256, so the longer one
    reaches at most ``256 * max_aspect_ratio`` (a 39000x1 PNG of 195 bytes would otherwise become
    ~10 million x 256 pixels). ``max_batch_pixels`` bounds the decoding work of one batch.
    """

    max_pixels: int = 40_000_000
    max_aspect_ratio: float = 32.0
    max_batch_pixels: int = 100_000_000

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.max_aspect_ratio < 1:
            raise ValueError(f"need max_pixels >= 1 and max_aspect_ratio >= 1, got {self}")
        if self.max_batch_pixels < self.max_pixels:
            raise ValueError(
                f"max_batch_pixels ({self.max_batch_pixels:,}) must be >= "
                f"max_pixels ({self.max_pixels:,}) or a lone largest image could never be served"
            )


class ImageError(ValueError):
    """An image that cannot be served; ``code`` says why (mapped to an HTTP status upstream)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def unsupported(what: str) -> ImageError:
    return ImageError(UNSUPPORTED_IMAGE_TYPE, f"{what} images are not served; send {SERVED}")


def sniff_format(data: bytes) -> str:
    """The served format ``data`` claims by its signature; refuses everything else."""
    if not data:
        raise ImageError(UNDECODABLE_IMAGE, "empty file")
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    for signature, name in _OTHER_SIGNATURES.items():
        if data.startswith(signature):
            raise unsupported(name)
    if data[4:8] == b"ftyp" and (name := _ISO_BMFF_BRANDS.get(data[8:12])):
        raise unsupported(name)
    raise ImageError(UNDECODABLE_IMAGE, f"not an image: the content is not {SERVED}")


def open_image(data: bytes, image_format: str, limits: ImageLimits) -> Image.Image:
    """Read the header only (as ``sniff_format`` named it): frame count, pixels and aspect
    ratio are checked."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[image_format])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(IMAGE_TOO_LARGE, f"more than {limits.max_pixels:,} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise ImageError(UNDECODABLE_IMAGE, f"not a valid {image_format} file") from None
    if getattr(image, "n_frames", 1) > 1 and image.format != MULTI_PICTURE_JPEG:
        raise unsupported(f"animated {image_format}")
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageError(
            IMAGE_TOO_LARGE,
            f"{width}x{height} = {width * height:,} pixels exceeds {limits.max_pixels:,}",
        )
    if max(width, height) > limits.max_aspect_ratio * min(width, height):
        raise ImageError(
            IMAGE_TOO_LARGE,
            f"{width}x{height}: aspect ratio above {limits.max_aspect_ratio:g}:1 is not served",
        )
    return image


class TooManyParts(Exception):
    """A structure walk met more segments or chunks than any real image has."""


class TooManyScans(Exception):
    """A JPEG with more scans than ``MAX_JPEG_SCANS``: each costs a pass over every pixel."""


def check_complete(image_format: str, data: bytes) -> None:
    """Refuse files cut short, from their structure, without decoding. Bytes after the end of
    the image (a phone's "motion photo" video after a JPEG's EOI, data after a PNG's IEND) are
    allowed: the image itself is whole. The walk is bounded (``MAX_JPEG_SEGMENTS``,
    ``MAX_PNG_CHUNKS``), and so is the decoding work it lets through (``MAX_JPEG_SCANS``,
    ``MAX_PNG_METADATA_CHUNKS``)."""
    try:
        complete = _COMPLETE[image_format](data)
    except TooManyParts as exc:
        raise ImageError(UNDECODABLE_IMAGE, f"not a served {image_format}: {exc}") from None
    except TooManyScans as exc:
        raise ImageError(
            IMAGE_TOO_LARGE, f"{exc}: decoding costs a pass over the picture per scan"
        ) from None
    if not complete:
        raise ImageError(UNDECODABLE_IMAGE, f"truncated {image_format} file ({len(data):,} bytes)")


def _jpeg_complete(data: bytes) -> bool:
    """Walk the marker segments to EOI, counting scans. Inside entropy-coded data 0xFF is always
    stuffed, so the next marker found there is real (an EXIF thumbnail's EOI sits inside a
    segment that is skipped whole)."""
    position, segments, scans = 2, 0, 0
    while position + 2 <= len(data):
        if data[position] != 0xFF:
            return False
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xD9:
            return True
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise TooManyParts(f"more than {MAX_JPEG_SEGMENTS} marker segments")
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        position += 2 + length
        if marker == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise TooManyScans(f"a JPEG of more than {MAX_JPEG_SCANS} scans is not served")
            if (found := _JPEG_MARKER.search(data, position)) is None:
                return False
            position = found.start()
    return False


def _png_complete(data: bytes) -> bool:
    """Walk the chunks (length, type, data, CRC) until IEND."""
    position, chunks = 8, 0
    metadata = dict.fromkeys(MAX_PNG_METADATA_CHUNKS, 0)
    while position + 12 <= len(data):
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise TooManyParts(f"more than {MAX_PNG_CHUNKS} chunks")
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        if kind == b"IEND":
            return True
        if kind in metadata:
            metadata[kind] += 1
            if metadata[kind] > (limit := MAX_PNG_METADATA_CHUNKS[kind]):
                raise TooManyParts(f"more than {limit} {kind.decode()} chunk(s)")
        position += 12 + length
    return False


def _webp_complete(data: bytes) -> bool:
    return int.from_bytes(data[4:8], "little") + 8 <= len(data)


_COMPLETE = {"JPEG": _jpeg_complete, "PNG": _png_complete, "WEBP": _webp_complete}


def validate(data: bytes, limits: ImageLimits) -> Image.Image:
    """Everything that can be refused without decoding a pixel (the gateway's check)."""
    image_format = sniff_format(data)
    check_complete(image_format, data)
    return open_image(data, image_format, limits)
