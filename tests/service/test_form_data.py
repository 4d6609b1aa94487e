"""Multipart bodies split in memory: every part byte for byte (boundary look-alikes inside the
data included), the boundary read by a header parser, parts and headers bounded."""

from __future__ import annotations

import os

import pytest

from service.form_data import (
    MAX_PART_HEADERS,
    MalformedForm,
    TooManyParts,
    boundary,
    parse_form,
)

FILE = 'Content-Disposition: form-data; name="file"; filename="{name}"\r\nContent-Type: {kind}'


def body(parts: list[tuple[str, bytes]], separator: str = "b0undary") -> bytes:
    return (
        b"".join(
            f"--{separator}\r\n{headers}\r\n\r\n".encode() + data + b"\r\n"
            for headers, data in parts
        )
        + f"--{separator}--\r\n".encode()
    )


def test_parts_come_back_in_order_byte_for_byte():
    photo = os.urandom(6 * 2**20)  # a camera photo's size: no temporary file, one slice
    look_alike = b"A\r\n--b0undarZ\r\n--b0undar"  # starts a boundary, then is not one
    parts = parse_form(
        body(
            [
                (FILE.format(name="a.jpg", kind="image/JPEG; q=1"), photo),
                ('Content-Disposition: form-data; name="note"', b"hello"),
                (FILE.format(name="b.png", kind="image/png"), look_alike),
            ]
        ),
        "multipart/form-data; boundary=b0undary",
        max_parts=3,
    )
    assert [(p.name, p.filename, p.content_type) for p in parts] == [
        ("file", "a.jpg", "image/jpeg"),
        ("note", None, ""),
        ("file", "b.png", "image/png"),
    ]
    assert parts[0].data == photo and parts[1].data == b"hello" and parts[2].data == look_alike


@pytest.mark.parametrize(
    "header",
    [
        "multipart/form-data; boundary=b0undary; x=1",  # a parameter after it (issue 35)
        'multipart/form-data; boundary="b0undary"',
        "multipart/form-data;boundary=b0undary",
    ],
)
def test_the_boundary_is_read_by_a_header_parser(header):
    assert boundary(header) == b"b0undary"
    assert len(parse_form(body([(FILE.format(name="a", kind="image/png"), b"x")]), header, 1)) == 1


def test_past_the_part_limit_the_parse_stops_and_counts_them_all():
    parts = [(FILE.format(name="a", kind="image/png"), b"x")] * 40
    with pytest.raises(TooManyParts) as refused:
        parse_form(body(parts), "multipart/form-data; boundary=b0undary; x=1", max_parts=32)
    assert refused.value.count == 40


def test_lines_that_look_like_delimiters_are_refused_before_parsing():
    """python-multipart steps byte by byte through each line that begins like a delimiter: 10
    MiB of them held the GIL for 2.4 s (every request and ``/healthz`` stalled). Counted first;
    a part that holds a few is still served."""
    part = FILE.format(name="a", kind="image/png")
    look_alikes = b"\r\n--a\r" * (10 * 2**20 // 6)
    with pytest.raises(MalformedForm, match="lines begin with the boundary"):
        parse_form(body([(part, look_alikes)], "a"), "multipart/form-data; boundary=a; x=1", 32)
    [served] = parse_form(
        body([(part, b"\r\n--a\r" * 8)], "a"), "multipart/form-data; boundary=a", 32
    )
    assert served.data == b"\r\n--a\r" * 8


@pytest.mark.parametrize(
    ("content", "header", "why"),
    [
        (b"--x\r\nbroken", "multipart/form-data", "Missing boundary"),
        (b"--x\r\nbroken", "multipart/form-data; boundary=x", "ends before its closing"),
        (
            b'--x\r\nContent-Disposition: form-data; name="file"\r\n\r\ndata',
            "multipart/form-data; boundary=x",
            "ends before its closing",
        ),
        (b"--x\r\nno colon here\r\n\r\ndata\r\n--x--\r\n", "multipart/form-data; boundary=x", ""),
        (
            b"--x\r\n" + b"H: v\r\n" * (MAX_PART_HEADERS + 1) + b"\r\nd\r\n--x--\r\n",
            "multipart/form-data; boundary=x",
            "",
        ),
        (b"--y\r\n\r\nd\r\n--y--\r\n", "multipart/form-data; boundary=x", ""),
    ],
)
def test_malformed_bodies_are_refused_saying_why(content, header, why):
    with pytest.raises(MalformedForm, match=why):
        parse_form(content, header, max_parts=4)
