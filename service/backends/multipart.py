"""A batch as one ``multipart/form-data`` body, built in one piece.

httpx streams a multipart body part by part, and each part's pieces are separate writes through
anyio (a profile of the gateway under load: a socket write per part header, payload and line
break). The body is a few MiB at most: joined once, it goes in one write."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

FILE_TYPE = "application/octet-stream"


def encode_form(fields: Mapping[str, str], files: Sequence[tuple[str, bytes]]) -> tuple[bytes, str]:
    """``(body, content_type)``: each field as a form value, each ``(name, data)`` of ``files``
    as a file part named ``name`` (its file name too); a boundary found in no payload."""
    while True:
        boundary = secrets.token_hex(16).encode()
        if not any(boundary in data for _, data in files):
            break
    parts = [
        b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
        % (boundary, name.encode(), value.encode())
        for name, value in fields.items()
    ]
    for name, data in files:
        head = b'--%s\r\nContent-Disposition: form-data; name="%s"; filename="%s"\r\n' % (
            boundary,
            name.encode(),
            name.encode(),
        )
        parts += [head, b"Content-Type: %s\r\n\r\n" % FILE_TYPE.encode(), data, b"\r\n"]
    parts.append(b"--%s--\r\n" % boundary)
    return b"".join(parts), f"multipart/form-data; boundary={boundary.decode()}"
