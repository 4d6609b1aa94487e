"""Keep a local TorchServe up: start it again whenever its frontend exits."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .host import TorchServeError
from .launcher import TorchServe

log = logging.getLogger(__name__)


class Supervisor(threading.Thread):
    """Starts ``server`` again whenever it exits (its Java frontend crashed or was killed),
    until ``stop``: a local stack outlives the loss of its TorchServe as a pod outlives a
    container. TorchServe restarts its own dead workers; this covers the frontend. Each
    restart writes new keys, which every ``KeyRing`` reads from the key file."""

    def __init__(
        self,
        server: TorchServe,
        progress: Callable[[str], None] = log.info,
        poll_s: float = 1.0,
        ready_timeout_s: float = 900.0,
    ) -> None:
        super().__init__(name="torchserve-supervisor", daemon=True)
        self.server = server
        self.progress = progress
        self.poll_s = poll_s
        self.ready_timeout_s = ready_timeout_s
        self.restarts = 0
        self._stopping = threading.Event()
        self._lifecycle = threading.Lock()  # no start after stop() has begun

    def run(self) -> None:
        failures = 0
        while not self._stopping.wait(self.poll_s * 2**failures):
            process = self.server.process
            if process is None or process.poll() is None:
                continue
            with self._lifecycle:
                if self._stopping.is_set():
                    return
                log.error("TorchServe exited with code %s; starting it again", process.returncode)
                self.server.stop()  # what is left of its group: workers, a frontend
                self.server.start()
            try:
                self.server.wait_ready(self.ready_timeout_s, self.progress)
            except TorchServeError as exc:
                if self._stopping.is_set():  # stopped while it came back
                    return
                failures = min(failures + 1, 6)
                log.error("TorchServe did not come back: %s", exc)
                continue
            failures = 0
            self.restarts += 1
            self.progress(f"TorchServe is back (restart {self.restarts})")

    def stop(self) -> None:
        """Stop supervising, then stop the server."""
        self._stopping.set()
        with self._lifecycle:
            self.server.stop()
        self.join(timeout=self.poll_s + 35)
