"""``multipart/form-data`` bodies split into their parts, in memory, off the event loop.

The body is already read within the upload limits. Starlette's form parser spooled every file
part over 1 MiB to a temporary file (a camera photo went memory, disk, memory), and ran on the
event loop; here python-multipart's parser runs over the body in one pass, in the thread that
validates the images, and each part's bytes are sliced from the body once. The boundary comes
from a real header parser (``boundary=a; x=1`` is ``a``), and the parser's work is bounded
before it starts: python-multipart steps byte by byte through every line that begins like a
delimiter (10 MiB of ``\r\n--a\r`` held the GIL for 2.4 s), so a body with more delimiter lines
than ``max_parts`` allows is refused from a count made at C speed; past ``max_parts`` parts the
parse stops too.
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

MAX_PART_HEADERS = 8
"""Header lines one part may carry (a browser sends two or three)."""
MAX_PART_HEADER_BYTES = 1024
"""The longest header line of a part."""


class MalformedForm(ValueError):
    """The body is not a well-formed ``multipart/form-data`` message."""


class TooManyParts(ValueError):
    """More parts than allowed; ``count`` is how many the body holds."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"{count} parts, limit {limit}")
        self.count = count


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None
    """None for a text field (no ``filename`` in its ``Content-Disposition``)."""
    content_type: str
    """Lower case, without parameters; "" when the part declares none."""
    data: bytes


def boundary(content_type: str) -> bytes:
    """The boundary a ``Content-Type: multipart/form-data; boundary=...`` header declares."""
    _, options = parse_options_header(content_type)
    if not (found := options.get(b"boundary")):
        raise MalformedForm("Missing boundary in multipart.")
    return found


def delimiter_lines(body: bytes, separator: bytes) -> tuple[int, int]:
    """Lines that begin like a delimiter, and those that are one starting a part (what a
    refusal reports as the part count). RFC 2046: a delimiter never occurs inside a part."""
    first = int(body.startswith(b"--" + separator))
    line = b"\r\n--" + separator
    return body.count(line) + first, body.count(line + b"\r\n") + first


def check_delimiters(body: bytes, separator: bytes, max_parts: int) -> None:
    """Refuses a body the parser would step through for long: more parts than ``max_parts``,
    or more lines that look like delimiters than so many parts and the closing one have."""
    lines, parts = delimiter_lines(body, separator)
    if parts > max_parts:
        raise TooManyParts(parts, max_parts)
    if lines > max_parts + 1:
        raise MalformedForm(
            f"{lines:,} lines begin with the boundary, more than {max_parts} parts have: the "
            "boundary must not occur inside a part (RFC 2046)"
        )


def parse_form(body: bytes, content_type: str, max_parts: int) -> list[Part]:
    """Every part of ``body``, in order. ``MalformedForm`` for a body the parser refuses or one
    that ends before its closing boundary; ``TooManyParts`` once a part past ``max_parts``
    begins."""
    separator = boundary(content_type)
    check_delimiters(body, separator, max_parts)
    parts: list[Part] = []
    headers: dict[str, str] = {}
    field: list[bytes] = []
    value: list[bytes] = []
    pieces: list[memoryview | bytes] = []
    ended = False
    view = memoryview(body)

    def part_begin() -> None:
        if len(parts) >= max_parts:
            raise TooManyParts(len(parts) + 1, max_parts)
        headers.clear()
        pieces.clear()

    def part_data(data: bytes, start: int, stop: int) -> None:
        """A slice of the body, or of the parser's own buffer (bytes it held back while they
        might have begun a boundary): copied, the parser reuses it."""
        pieces.append(view[start:stop] if data is body else bytes(data[start:stop]))

    def header_end() -> None:
        name = b"".join(field).decode("latin-1").strip().lower()
        headers[name] = b"".join(value).decode("latin-1").strip()
        field.clear()
        value.clear()

    def part_end() -> None:
        _, disposition = parse_options_header(headers.get("content-disposition", ""))
        kind, _ = parse_options_header(headers.get("content-type", ""))
        filename = disposition.get(b"filename")
        parts.append(
            Part(
                name=disposition.get(b"name", b"").decode("utf-8", "replace"),
                filename=None if filename is None else filename.decode("utf-8", "replace"),
                content_type=kind.decode("latin-1"),
                data=b"".join(pieces),
            )
        )

    def end() -> None:
        nonlocal ended
        ended = True

    parser = MultipartParser(
        separator,
        {
            "on_part_begin": part_begin,
            "on_header_field": lambda data, start, stop: field.append(bytes(data[start:stop])),
            "on_header_value": lambda data, start, stop: value.append(bytes(data[start:stop])),
            "on_header_end": header_end,
            "on_part_data": part_data,
            "on_part_end": part_end,
            "on_end": end,
        },
        max_header_count=MAX_PART_HEADERS,
        max_header_size=MAX_PART_HEADER_BYTES,
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise MalformedForm(f"malformed multipart body: {exc}") from None
    if not ended:
        raise MalformedForm("the multipart body ends before its closing boundary")
    return parts
