"""The batch body the gateway sends a worker: every input back as sent, in order, and bodies
that do not add up refused, without a multipart parser on either side."""

from __future__ import annotations

import json

import pytest

from contract import batch
from contract.images import FORMATS
from contract.protocol import PROBABILITIES_FIELD, TOP_K_FIELD

JPEG, PNG, WEBP = b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"RIFF\0\0\0\0WEBP"


def test_every_input_comes_back_as_sent_in_order():
    inputs = [("image", JPEG + b"x" * 5000), ("tensor", b"\0" * 12), ("image", PNG), ("image", b"")]
    body = batch.encode(inputs, top_k=3, probabilities=True)
    sent = batch.decode(body)
    assert (sent.top_k, sent.probabilities) == (3, True)
    assert [(kind, bytes(data)) for kind, data in sent.inputs] == inputs


@pytest.mark.parametrize("image", [JPEG, PNG, WEBP, b"", b"\0"])
def test_no_image_and_no_short_body_reads_as_a_batch(image):
    assert set(FORMATS) >= {"JPEG", "PNG", "WEBP"}
    assert not batch.is_batch(image)


def _header(body: bytes) -> dict:
    start = len(batch.MAGIC) + 4
    length = int.from_bytes(body[len(batch.MAGIC) : start], "big")
    return json.loads(body[start : start + length])


def _with_header(header: dict, payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    return batch.MAGIC + len(text).to_bytes(4, "big") + text + payload


GOOD = {TOP_K_FIELD: 5, PROBABILITIES_FIELD: False, batch.INPUTS_FIELD: [["image", 3]]}


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (batch.MAGIC + b"\0\0", "not a batch"),
        (batch.MAGIC + (10**6).to_bytes(4, "big") + b"{}", "header of 1000000 bytes"),
        (batch.MAGIC + (4).to_bytes(4, "big") + b"{no}", "unreadable"),
        (_with_header({**GOOD, TOP_K_FIELD: "5"}, b"abc"), "top_k must be an integer"),
        (_with_header({**GOOD, batch.INPUTS_FIELD: [["audio", 3]]}, b"abc"), "unknown input"),
        (_with_header(GOOD, b"ab"), "do not add up"),
        (_with_header(GOOD, b"abcd"), "do not add up"),
        (_with_header({**GOOD, batch.INPUTS_FIELD: [["image", -1], ["image", 4]]}, b"abc"), "add"),
        (_with_header({TOP_K_FIELD: 5}, b""), "unreadable"),
    ],
)
def test_a_body_that_does_not_add_up_is_refused_saying_why(body, why):
    with pytest.raises(batch.MalformedBatch, match=why):
        batch.decode(body)


def test_the_header_is_plain_json_naming_each_input():
    body = batch.encode([("image", JPEG), ("tensor", b"\0" * 8)], top_k=1, probabilities=False)
    assert _header(body) == {
        TOP_K_FIELD: 1,
        PROBABILITIES_FIELD: False,
        batch.INPUTS_FIELD: [["image", len(JPEG)], ["tensor", 8]],
    }
