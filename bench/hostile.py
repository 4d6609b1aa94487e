"""Hostile uploads, made with Pillow, each with the status the gateway must answer it with: a
soak mixes bursts of them into honest traffic to show they cost nobody else an answer."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlsplit

import httpx
from PIL import Image

from model_store.worker.synthetic import encode, make_images

SLOW_UPLOAD_BYTES = 64 * 1024
SLOW_CHUNK_INTERVAL_S = 0.5
"""A slow upload sends 256 bytes this often: it never finishes within any upload timeout."""


@dataclass(frozen=True)
class Hostile:
    kind: str
    expected_status: int
    body: Callable[[], bytes]
    slow: bool = False


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
def oversized_body() -> bytes:
    """20 MB: twice the gateway's default upload limit."""
    return os.urandom(20 * 2**20)


HOSTILE = (
    Hostile("pixel_bomb", 413, pixel_bomb),
    Hostile("truncated", 400, truncated_jpeg),
    Hostile("gif", 415, gif),
    Hostile("oversized_body", 413, oversized_body),
    Hostile("slow_upload", 408, lambda: b"", slow=True),
)
HOSTILE_KINDS = {h.kind: h for h in HOSTILE}


async def send_hostile(client: httpx.AsyncClient, url: str, model: str, hostile: Hostile) -> int:
    """The status the gateway answered ``hostile`` with; 0 when none came back."""
    path = f"/v1/models/{model}/classify"
    if hostile.slow:
        return await slow_upload(url, path, timeout_s=120)
    try:
        response = await client.post(
            f"{url}{path}", content=hostile.body(), headers={"Content-Type": "image/jpeg"}
        )
    except httpx.HTTPError:
        return 0
    return response.status_code


async def slow_upload(url: str, path: str, timeout_s: float) -> int:
    """A client that announces a body and trickles it (a slowloris upload): the status line
    the gateway answers with once it gives up on the body; 0 when none came."""
    address = urlsplit(url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {SLOW_UPLOAD_BYTES}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode())

    async def trickle() -> None:
        for _ in range(SLOW_UPLOAD_BYTES // 256):
            writer.write(b"\0" * 256)
            await writer.drain()
            await asyncio.sleep(SLOW_CHUNK_INTERVAL_S)

    trickling = asyncio.create_task(trickle())
    try:
        status_line = await asyncio.wait_for(reader.readline(), timeout_s)
        return int(status_line.split()[1]) if status_line else 0
    except (TimeoutError, ConnectionError, ValueError, IndexError):
        return 0
    finally:
        trickling.cancel()
        writer.close()
