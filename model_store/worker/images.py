"""Decoding a validated upload (``contract.images.validate``) to the upright 8-bit RGB the
eval pipeline starts from."""

from __future__ import annotations

from PIL import Image, ImageOps

from contract.errors import UNDECODABLE_IMAGE
from contract.images import ImageError


def load_upright_rgb(image: Image.Image, draft_side: int = 0) -> Image.Image:
    """A validated image, fully decoded to 8-bit RGB and rotated upright by its EXIF orientation
    (as browsers show it).

    ``draft_side`` > 0 lets libjpeg decode at a reduced DCT scale while the shorter side stays
    >= it: several times less work, but different pixels, so it is an archive's explicit opt-in.
    """
    if draft_side and image.format == "JPEG":
        image.draft("RGB", (draft_side, draft_side))
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError):
        raise ImageError(UNDECODABLE_IMAGE, f"corrupt or truncated {image.format} file") from None
    ImageOps.exif_transpose(image, in_place=True)  # no copy when there is nothing to rotate
    return to_rgb(image)


WHITE = (255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: 16-bit keeps its high byte, alpha is composited on white.

    Written to hold few bytes per decoded pixel at once (no same-mode copies, no int64 arrays, no
    RGBA background), so the worker's memory per image has a ceiling proportional to
    ``max_pixels``: ``python -m bench.memory`` measures it.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np  # the decoding worker has it; the gateway's header checks need none

        pixels = np.asarray(image)
        if pixels.dtype != np.uint16:
            pixels = np.clip(pixels, 0, 65535).astype(np.uint16)
        image = Image.fromarray((pixels >> 8).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, WHITE)
        rgb.paste(rgba, mask=rgba)
        return rgb
    return image.convert("RGB") if image.mode != "RGB" else image
