"""TorchServe's ``config.properties`` for one server: the template with its host and ports, the
management API and gRPC (which the gateway does not use) on loopback only, model archives
fetched from the archive directory only, and the key lifetime."""

from __future__ import annotations

import re
from pathlib import Path

from contract.keys import TOKEN_EXPIRATION_ENV

from .host import LOOPBACK, TorchServeError

CONFIG_TEMPLATE = Path(__file__).with_name("config.properties")


def allowed_urls(archive_dir: Path) -> str:
    """TorchServe's ``allowed_urls``: ``file://`` URLs inside ``archive_dir``, as a Java regex
    written for a properties file (which would eat backslashes): each character that is not a
    letter, digit or slash goes in a bracket of its own."""
    literal = "".join(
        c if c.isalnum() or c == "/" else f"[{c}]" for c in str(archive_dir.resolve())
    )
    if any(c in "[]^\\" for c in str(archive_dir)):
        raise TorchServeError(f"archive directory {archive_dir} has characters we do not escape")
    return f"file://{literal}/[^/]+"


def render(
    template: Path,
    host: str,
    ports: tuple[int, int, int, int, int],
    archive_dir: Path,
    key_minutes: float | None,
) -> str:
    """The template with inference and metrics on ``host``, everything else on loopback;
    ``ports``: inference, management, metrics, gRPC inference, gRPC management."""
    inference, management, metrics, grpc_inference, grpc_management = ports
    text = template.read_text()
    for name, address, port in (
        ("inference", host, inference),
        ("management", LOOPBACK, management),
        ("metrics", host, metrics),
    ):
        text = re.sub(
            rf"^{name}_address=.*$", f"{name}_address=http://{address}:{port}", text, flags=re.M
        )
    text = (
        f"{text.rstrip()}\n# gRPC (not used by the gateway) on loopback, on ports of its own\n"
        f"grpc_inference_address={LOOPBACK}\ngrpc_inference_port={grpc_inference}\n"
        f"grpc_management_address={LOOPBACK}\ngrpc_management_port={grpc_management}\n"
        "# archives come from the archive directory only, never from a URL\n"
        f"allowed_urls={allowed_urls(archive_dir)}\n"
    )
    if key_minutes is not None:
        text += f"# key lifetime (${TOKEN_EXPIRATION_ENV})\ntoken_expiration_min={key_minutes:g}\n"
    return text
