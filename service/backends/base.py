"""The one small interface the gateway needs from whatever runs the model."""

from __future__ import annotations

from typing import Any, Protocol


class BackendUnavailable(Exception):
    """The backend cannot take work now (down, restarting, overloaded); retry after a while."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BackendTimeout(Exception):
    """The backend took longer than the configured timeout."""


class Backend(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def classify(self, model: str, images: list[bytes], top_k: int) -> list[dict[str, Any]]:
        """One entry per image, in order: ``{"predictions": [...]}`` or ``{"error": {...}}``.
        Raises ``BackendUnavailable`` or ``BackendTimeout`` for the whole batch."""
        ...

    async def readiness(self) -> dict[str, str]:
        """Per served model: ``"ready"`` or why not."""
        ...
