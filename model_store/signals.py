"""How ``python -m service`` and ``python -m model_store serve`` end on SIGTERM (``docker stop``,
Kubernetes, systemd): as on Ctrl-C. Torch-free: the gateway imports it."""

from __future__ import annotations

import signal
from types import FrameType
from typing import NoReturn


def exit_on_sigterm(signum: int, _: FrameType | None) -> NoReturn:
    """SIGTERM's default action kills the process before any ``finally`` runs, which orphans
    TorchServe. As an exception it unwinds like Ctrl-C, and every ``finally`` stops what it
    started; exit 0, a clean stop (``docker stop`` tells it from a kill at the grace: 137)."""
    raise SystemExit(0)


def unwind_on_sigterm() -> None:
    signal.signal(signal.SIGTERM, exit_on_sigterm)
