"""Hostile uploads, made with Pillow, each with the status the gateway must answer it with: a
soak mixes bursts of them into honest traffic to show they cost nobody else an answer."""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import os
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image

from model_store.demo.synthetic import encode, make_images
from perf.common import progress, report

V1_CLASSIFY = "/v1/models/{model}/classify"
V2_INFER = "/v2/models/{model}/infer"


@dataclass(frozen=True)
class Trickle:
    """A body sent over a raw connection, ``chunk`` bytes every ``interval_s``, announced with
    ``Expect: 100-continue`` as curl announces large bodies: a gateway that refuses it from its
    head (413) answers before any of it is sent, instead of closing on a connection still
    receiving, whose reset may destroy the answer before the client reads it."""

    chunk: int
    interval_s: float


@dataclass(frozen=True)
class Hostile:
    kind: str
    expected_status: int
    body: Callable[[], bytes]
    trickle: Trickle | None = None
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "image/jpeg"),)
    route: str = V1_CLASSIFY


@cache
def pixel_bomb() -> bytes:
    """48 megapixels (over the 40 M limit) in a PNG of a few tens of kB."""
    return encode(Image.new("L", (8000, 6000)), "PNG")


@cache
def truncated_jpeg() -> bytes:
    [image], _ = make_images(1, seed=11, size=(640, 480))
    data = encode(image, "JPEG", quality=90)
    return data[: len(data) // 2]


@cache
def gif() -> bytes:
    [image], _ = make_images(1, seed=12, size=(64, 64))
    buffer = io.BytesIO()
    image.save(buffer, format="GIF")
    return buffer.getvalue()


@cache
def scan_bomb(side: int = 6000, repeats: int = 20_000) -> bytes:
    """A progressive JPEG whose smallest scan is repeated ``repeats`` times before its end: each
    scan costs libjpeg a pass over all ``side`` x ``side`` pixels (6000 and 20,000: 1.3-2.5 MB
    that Pillow decodes for minutes)."""
    image = Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (side // 50, side // 50, 3), dtype=np.uint8)
    ).resize((side, side))
    data = encode(image, "JPEG", progressive=True, quality=80)
    starts = [found.start() for found in re.finditer(b"\xff\xda", data)]
    end = len(data) - 2  # its EOI
    scans = [data[a:b] for a, b in zip(starts, [*starts[1:], end], strict=True)]
    return data[:end] + min(scans, key=len) * repeats + data[end:]


@cache
def png_text_bomb(chunks: int = 63) -> bytes:
    """A small PNG carrying ``chunks`` zTXt chunks of 1 KB, each inflating to 1 MiB when the
    file is opened (66 KB: 64 MB and 0.2 s per image, before a pixel is decoded)."""
    text = b"Comment\x00\x00" + zlib.compress(bytes(2**20), 9)
    chunk = len(text).to_bytes(4, "big") + b"zTXt" + text
    chunk += zlib.crc32(chunk[4:]).to_bytes(4, "big")
    data = encode(Image.new("RGB", (64, 64)), "PNG")
    header_end = 8 + 25  # signature, IHDR
    return data[:header_end] + chunk * chunks + data[header_end:]


LOOK_ALIKE_BOUNDARY = "a"


@cache
def delimiter_look_alikes() -> bytes:
    """10 MiB of one image part made of lines that begin like its delimiter (the part's
    boundary ``a``, sent as ``boundary=a; x=1``): python-multipart stepped through them for
    seconds while holding the GIL."""
    return (
        b'--a\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n'
        + b"\r\n--a\r" * (10 * 2**20 // 6 - 100)
        + b"\r\n--a--\r\n"
    )


@cache
def json_bomb() -> bytes:
    """25 KB of gzip that inflates to 10 MiB of ``outputs`` entries: parsed, ~430 MB of
    objects."""
    entries = b",".join([b'{"name":"a"}'] * (10 * 2**20 // 13 - 8))
    request = b'{"inputs":[{"name":"images","shape":[1],"datatype":"BYTES","data":[""]}],'
    return gzip.compress(request + b'"outputs":[' + entries + b"]}")


@cache
def oversized_body() -> bytes:
    """20 MB: twice the gateway's default upload limit."""
    return os.urandom(20 * 2**20)


HOSTILE = (
    Hostile("pixel_bomb", 413, pixel_bomb),
    Hostile("truncated", 400, truncated_jpeg),
    Hostile("gif", 415, gif),
    Hostile("oversized_body", 413, oversized_body, Trickle(64 * 1024, 0.0)),
    # 512 bytes/s: never arrives within the gateway's upload time, nor at its minimum rate
    Hostile("slow_upload", 408, lambda: bytes(64 * 1024), Trickle(256, 0.5)),
    Hostile("scan_bomb", 413, scan_bomb),
    Hostile("png_text_bomb", 400, png_text_bomb, headers=(("Content-Type", "image/png"),)),
    Hostile(
        "delimiter_look_alikes",
        400,
        delimiter_look_alikes,
        headers=(("Content-Type", f"multipart/form-data; boundary={LOOK_ALIKE_BOUNDARY}; x=1"),),
    ),
    Hostile(
        "json_bomb",
        413,
        json_bomb,
        headers=(("Content-Type", "application/json"), ("Content-Encoding", "gzip")),
        route=V2_INFER,
    ),
)
HOSTILE_KINDS = {h.kind: h for h in HOSTILE}


async def send_hostile(client: httpx.AsyncClient, url: str, model: str, hostile: Hostile) -> int:
    """The status the gateway answered ``hostile`` with; 0 when none came back."""
    path = hostile.route.format(model=model)
    if hostile.trickle is not None:
        return await raw_upload(url, path, hostile.body(), hostile.trickle, timeout_s=120)
    try:
        response = await client.post(
            f"{url}{path}", content=hostile.body(), headers=dict(hostile.headers)
        )
    except httpx.HTTPError:
        return 0
    return response.status_code


async def raw_upload(url: str, path: str, body: bytes, trickle: Trickle, timeout_s: float) -> int:
    """The final status the gateway answers ``body`` with, sent as ``trickle`` says; 0 when
    none came."""
    address = urlsplit(url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode())

    async def send() -> None:
        for start in range(0, len(body), trickle.chunk):
            writer.write(body[start : start + trickle.chunk])
            await writer.drain()
            await asyncio.sleep(trickle.interval_s)

    sending: asyncio.Task[None] | None = None
    try:
        status = await _status(reader, CONTINUE_WAIT_S)
        if status not in (None, 100):  # refused from its head
            return status
        sending = asyncio.create_task(send())
        return await _status(reader, timeout_s) or 0
    except (TimeoutError, ConnectionError, ValueError, IndexError):
        return 0
    finally:
        if sending is not None:
            sending.cancel()
        writer.close()


CONTINUE_WAIT_S = 1.0
"""How long a client waits for ``100 Continue`` before sending the body anyway (curl's)."""


async def _status(reader: asyncio.StreamReader, timeout_s: float) -> int | None:
    """The next status line's code, skipping a ``100 Continue`` already read past; None when
    nothing came within ``timeout_s``."""
    try:
        line = await asyncio.wait_for(reader.readline(), timeout_s)
    except TimeoutError:
        return None
    status = int(line.split()[1])
    if status == 100:
        await reader.readline()  # the blank line ending the interim answer
    return status


def _checks() -> dict[str, Callable[[bytes], object]]:
    """Hostile kinds that cost work rather than bytes -> the gateway's check of them."""
    from contract.images import ImageLimits, validate
    from service.form_data import parse_form
    from service.open_inference.body import decompress, parse_request

    multipart = dict(HOSTILE_KINDS["delimiter_look_alikes"].headers)["Content-Type"]
    return {
        "scan_bomb": lambda data: validate(data, ImageLimits()),
        "png_text_bomb": lambda data: validate(data, ImageLimits()),
        "delimiter_look_alikes": lambda data: parse_form(data, multipart, 32),
        "json_bomb": lambda data: parse_request(decompress(data, "gzip", 10 * 2**20)),
    }


def _unbounded(kind: str, data: bytes) -> Callable[[], object] | None:
    """What the hostile input cost before it was bounded: Pillow decoding or opening it."""
    if kind == "scan_bomb":
        return lambda: Image.open(io.BytesIO(data)).load()
    if kind == "png_text_bomb":
        from PIL import PngImagePlugin

        def opened() -> object:
            kept, PngImagePlugin.MAX_TEXT_MEMORY = PngImagePlugin.MAX_TEXT_MEMORY, 64 * 2**20
            try:
                return Image.open(io.BytesIO(data))
            finally:
                PngImagePlugin.MAX_TEXT_MEMORY = kept

        return opened
    return None


def _timed(work: Callable[[], object]) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        work()
        outcome = "accepted"
    except Exception as exc:  # the refusal is the result
        outcome = f"{type(exc).__name__}: {str(exc)[:80]}"
    return (time.perf_counter() - started) * 1000, outcome


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.hostile``: what each hostile input that costs work (not bytes) costs
    the gateway's check now, and what Pillow spent on the image ones unbounded."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--scan-repeats", type=int, default=2000, help="scans added (decoded)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    bodies = {
        "scan_bomb": scan_bomb(6000, args.scan_repeats),
        "png_text_bomb": png_text_bomb(),
        "delimiter_look_alikes": delimiter_look_alikes(),
        "json_bomb": json_bomb(),
    }
    rows = []
    for kind, check in _checks().items():
        data = bodies[kind]
        progress(f"{kind}: {len(data):,} bytes ...")
        check_ms, refusal = _timed(lambda: check(data))  # noqa: B023 -- called at once
        unbounded = _unbounded(kind, data)
        before_ms = _timed(unbounded)[0] if unbounded else None
        rows.append(
            {
                "kind": kind,
                "bytes": len(data),
                "status": HOSTILE_KINDS[kind].expected_status,
                "check_ms": round(check_ms, 1),
                "refusal": refusal,
                "unbounded_ms": None if before_ms is None else round(before_ms, 1),
            }
        )
    report(
        "hostile",
        args,
        rows,
        [
            ("kind", "kind"),
            ("bytes", "bytes"),
            ("status", "status"),
            ("gateway check, ms", "check_ms"),
            ("Pillow unbounded, ms", "unbounded_ms"),
            ("refusal", "refusal"),
        ],
    )


if __name__ == "__main__":
    main()
