"""The gateway's core (batching, dispatch, backends) knows nothing of its HTTP layer, and its
settings import nothing else of the gateway: each can be read, tested and reused alone."""

from __future__ import annotations

import subprocess
import sys

import pytest

HTTP_FRAMEWORKS = ("fastapi", "starlette")


def imported_by(module: str) -> set[str]:
    """The top-level packages and ``service.*`` modules importing ``module`` pulls in, read in a
    fresh interpreter so nothing this test process imported counts."""
    code = (
        f"import sys, {module}; "
        "print('\\n'.join(n for n in sys.modules if '.' not in n or n.startswith('service.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


@pytest.mark.parametrize(
    "module",
    ["service.batcher", "service.dispatcher", "service.backends.torchserve_client",
     "service.backends.inprocess", "service.backends.endpoints", "service.cost_model"],
)  # fmt: skip
def test_the_core_imports_no_http_framework(module):
    loaded = imported_by(module)
    assert not loaded & set(HTTP_FRAMEWORKS), sorted(loaded & set(HTTP_FRAMEWORKS))


def test_settings_import_nothing_else_of_the_gateway():
    loaded = {name for name in imported_by("service.settings") if name.startswith("service.")}
    assert loaded == {"service.settings"}, sorted(loaded)
