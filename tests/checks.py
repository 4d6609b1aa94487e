"""Assertions shared by the test modules."""

from __future__ import annotations

import re

INTERNALS = re.compile(r"object at 0x|<[\w.]+ object|0x[0-9a-fA-F]{6,}|Traceback|<_io\.")
"""What must never reach a client's error message: object reprs, addresses, tracebacks."""
