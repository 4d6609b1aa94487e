"""The batch body the gateway sends TorchServe, parsed back by a real multipart parser
(Starlette's, python-multipart underneath): every field and file as sent, byte for byte."""

from __future__ import annotations

import asyncio
import secrets

from starlette.requests import Request

from service.backends import multipart
from service.backends.multipart import encode_form


async def parse(body: bytes, content_type: str) -> dict[str, object]:
    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "headers": [(b"content-type", content_type.encode())],
    }
    form = await Request(scope, receive).form()
    parsed = {
        name: await value.read() if hasattr(value, "read") else value
        for name, value in form.multi_items()
    }
    await form.close()
    return parsed


def test_fields_and_files_arrive_as_sent():
    images = [secrets.token_bytes(5000), b"", b"--\r\n\r\n--boundary-like\r\n"]
    fields = {"top_k": "5", "probabilities": "1"}
    body, content_type = encode_form(fields, [(f"input{i}", d) for i, d in enumerate(images)])
    parsed = asyncio.run(parse(body, content_type))
    assert parsed == fields | {f"input{i}": d for i, d in enumerate(images)}


def test_a_boundary_that_occurs_in_a_payload_is_drawn_again(monkeypatch):
    drawn = iter(["a" * 32, "b" * 32])
    monkeypatch.setattr(multipart.secrets, "token_hex", lambda _: next(drawn))
    payload = b"x--" + b"a" * 32 + b"--y"
    body, content_type = encode_form({}, [("input0", payload)])
    assert content_type.endswith("b" * 32)
    assert asyncio.run(parse(body, content_type)) == {"input0": payload}
