"""How every command line and environment variable of ours writes a list: comma separated,
blanks around items and empty items ignored (``"a, b,,c"`` is ``a``, ``b``, ``c``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def comma_separated(text: str, cast: Callable[[str], T] = str) -> list[T]:  # type: ignore[assignment]
    return [cast(item.strip()) for item in text.split(",") if item.strip()]
