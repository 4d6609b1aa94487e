"""Start a local TorchServe over the archives, wait until every model is ready, stop it cleanly.

Used by ``python -m model_store serve`` (and so ``make serve``) and by the test suite.
TorchServe is a Java server: without Java 17+ this fails fast, saying what to install.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.keys import (
    KEY_FILE_NAME,
    KeyRing,
    bearer,
    token_expiration_min,
)
from contract.protocol import DEFAULT_RUN_DIR

from ..worker.archive import DEFAULT_ARCHIVE_DIR
from ..worker.cpus import CpuSlots, available_cpus
from .config import CONFIG_TEMPLATE, render
from .host import LOOPBACK, TorchServeError, check_java, free_ports, group_alive
from .readiness import describe, wait_ready, warm_frontend

log = logging.getLogger(__name__)


@dataclass
class TorchServe:
    """One TorchServe process group serving ``models`` from ``archive_dir``."""

    models: list[str]
    archive_dir: Path = DEFAULT_ARCHIVE_DIR
    run_dir: Path = DEFAULT_RUN_DIR
    host: str = "127.0.0.1"
    inference_port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    grpc_ports: tuple[int, int] = (7070, 7071)  # unused by us, but TorchServe always binds them
    config_template: Path = CONFIG_TEMPLATE
    key_minutes: float | None = None
    """TorchServe's ``token_expiration_min``; None: ``$TORCHSERVE_TOKEN_EXPIRATION_MIN`` when set,
    else TorchServe's own (60)."""
    cpus: frozenset[int] | None = None
    """CPUs the server and its workers are pinned to, threads and CPU slots sized to them
    (replicas side by side on one machine, as pods with CPU limits); None: every CPU this
    process may use."""
    frontend_warmup: int = 0
    """Empty requests sent through the frontend once every model is ready, so its JVM has
    compiled its hot paths before traffic (``readiness.FRONTEND_WARMUP_REQUESTS`` for a server
    that will take traffic; 0 for the many short-lived ones of tests)."""
    worker_env: dict[str, str] = field(default_factory=dict)
    """Variables for TorchServe and its workers over the defaults and this process's own
    (``OMP_NUM_THREADS``, ``WORKER_CPU_SLOTS``...: a benchmark's options)."""
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    models_ready: bool = field(default=False, init=False)
    """Every model answered ready once: TorchServe takes traffic (the warm-up may still run)."""
    cpu_slots: CpuSlots | None = field(default=None, init=False, repr=False)
    """The slots its workers compute in (set at start): a batch computing holds one."""
    _keyring: KeyRing | None = field(default=None, init=False, repr=False)
    _tmp_dir: Path = field(default=Path(), init=False, repr=False)

    @classmethod
    def on_free_ports(
        cls, models: list[str], archive_dir: Path, run_dir: Path, **settings: Any
    ) -> TorchServe:
        """One on loopback ports nobody uses now (tests, benchmarks: several may run at once)."""
        inference, management, metrics, grpc_inference, grpc_management = free_ports(5)
        return cls(
            models,
            archive_dir,
            run_dir,
            inference_port=inference,
            management_port=management,
            metrics_port=metrics,
            grpc_ports=(grpc_inference, grpc_management),
            **settings,
        )

    @property
    def inference_url(self) -> str:
        return f"http://{self.host}:{self.inference_port}"

    @property
    def management_url(self) -> str:
        """Always on loopback: from other hosts only through a ``ManagementGate``."""
        return f"http://{LOOPBACK}:{self.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}"

    @property
    def key_file(self) -> Path:
        return self.run_dir / KEY_FILE_NAME

    @property
    def log_file(self) -> Path:
        return self.run_dir / "logs" / "console.log"

    @property
    def keyring(self) -> KeyRing:
        """This server's keys (re-read when TorchServe rewrites its key file)."""
        if self._keyring is None or self._keyring.key_file != self.key_file:
            self._keyring = KeyRing(self.key_file)
        return self._keyring

    def token(self, kind: str = "inference") -> str | None:
        """The current ``kind`` key, renewed first when it is about to expire; None while
        TorchServe has not written its keys, or when token authorization is off."""
        if self.keyring.due(kind):
            self.renew(kind)
        return self.keyring.current(kind)

    def headers(self, kind: str = "inference") -> dict[str, str]:
        """Headers presenting the current ``kind`` key (what a direct client sends)."""
        return bearer(self.token(kind))

    def recover(self, kind: str, refused: str | None) -> None:
        """After TorchServe refused the ``refused`` key: renew it, unless the key file already
        holds another one (renewed meanwhile, or TorchServe restarted)."""
        if self.keyring.current(kind) == refused:
            self.renew(kind)

    def renew(self, kind: str) -> None:
        """Ask TorchServe for a new ``kind`` key (it rewrites the key file); a failure is
        logged, and the next refusal asks again."""
        try:
            renewal = self.keyring.renewal(kind)
        except LookupError as exc:
            log.warning("cannot renew TorchServe's %s key: %s", kind, exc)
            return
        query = urllib.parse.urlencode(renewal["params"])
        request = urllib.request.Request(
            f"{self.management_url}{renewal['path']}?{query}",
            method="POST",
            headers=renewal["headers"],
        )
        try:
            with urllib.request.urlopen(request, timeout=5):
                pass
        except (urllib.error.URLError, ConnectionError) as exc:
            log.warning("renewing TorchServe's %s key failed: %s", kind, exc)
        self.keyring.renewed()

    def start(self) -> TorchServe:
        check_java()
        missing = [m for m in self.models if not (self.archive_dir / f"{m}.mar").exists()]
        if missing:
            raise TorchServeError(
                f"no archive for {missing} in {self.archive_dir}: run `python -m model_store build`"
            )
        self.run_dir = self.run_dir.resolve()
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.key_file.unlink(missing_ok=True)
        config = self.run_dir / "config.properties"
        try:
            config.write_text(self.config_text())
        except ValueError as exc:  # a setting from the environment that TorchServe would refuse
            raise TorchServeError(str(exc)) from None
        torchserve = Path(sys.executable).parent / "torchserve"
        command = [
            str(torchserve),
            "--start",
            "--foreground",
            "--ncs",
            "--model-store",
            str(self.archive_dir.resolve()),
            "--ts-config",
            str(config),
            "--models",
            ",".join(f"{m}={m}.mar" for m in self.models),
        ]
        # TorchServe's launcher refuses to start while another one's pid file sits in $TMPDIR,
        # and its workers' sockets live in Java's tmpdir ($TEMP): a directory of our own lets
        # several TorchServes run side by side (tests, benchmarks). Short, for socket paths.
        self._tmp_dir = Path(tempfile.mkdtemp(prefix="ts-"))
        env = (
            self._worker_defaults()
            | os.environ
            | self.worker_env
            | {
                "LOG_LOCATION": str(self.run_dir / "logs"),
                "METRICS_LOCATION": str(self.run_dir / "logs"),
                "TMPDIR": str(self._tmp_dir),
                "TEMP": str(self._tmp_dir),
            }
        )
        with self.log_file.open("ab") as console:
            self.process = subprocess.Popen(
                command,
                cwd=self.run_dir,
                stdout=console,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=(lambda: os.sched_setaffinity(0, self.cpus)) if self.cpus else None,
            )
        log.info("TorchServe starting (pid %d), log: %s", self.process.pid, self.log_file)
        return self

    def _worker_defaults(self) -> dict[str, str]:
        """What the environment may override (``OMP_NUM_THREADS`` included): every worker's
        batches run on all the CPUs, and the CPU slots let ``CPUs // threads`` of them compute
        at once across the workers of every model (``model_store.worker.cpus``): a model alone
        under traffic gets the whole machine, several share it without oversubscribing it.
        And an inductor cache that outlives this start (the JIT fallback then compiles once
        per machine, not once per worker start)."""
        cpus = available_cpus(self.cpus)
        asked = self.worker_env.get("OMP_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
        threads = int(asked or cpus)
        slots = CpuSlots(self.run_dir / "cpu-slots", max(1, cpus // max(1, threads)))
        self.cpu_slots = slots
        log.info(
            "workers on %d CPUs: %d intra-op threads per batch, %d batch(es) computing at once",
            cpus,
            threads,
            slots.count,
        )
        return {
            "OMP_NUM_THREADS": str(threads),
            "TORCHINDUCTOR_CACHE_DIR": str(self.run_dir / "inductor-cache"),
            **slots.environment(),
        }

    def config_text(self) -> str:
        """This server's ``config.properties`` (``config.render``)."""
        minutes = self.key_minutes if self.key_minutes is not None else token_expiration_min()
        return render(
            self.config_template,
            self.host,
            (self.inference_port, self.management_port, self.metrics_port, *self.grpc_ports),
            self.archive_dir,
            minutes,
        )

    def wait_ready(self, timeout: float = 900.0, progress: Any = None) -> dict[str, Any]:
        """Block until every model is ready (``readiness.wait_ready``) and the frontend is warm
        (``frontend_warmup``); returns the management API's descriptions. If the models do not
        get ready (exit, timeout, Ctrl-C) the whole process group is stopped first, so no caller
        leaves a half-started TorchServe behind. Once they are, TorchServe may take traffic: a
        signal during the warm-up is left to the caller, which drains before stopping it."""
        try:
            ready = wait_ready(self, timeout, progress)
        except BaseException:
            self.stop()
            raise
        self.models_ready = True
        if self.frontend_warmup:
            sent, seconds = warm_frontend(self, self.frontend_warmup)
            (progress or log.info)(
                f"TorchServe's frontend warmed up: {sent} requests, {seconds:.1f} s"
            )
        return ready

    def workers(self, model: str) -> list[dict[str, Any]]:
        """``model``'s workers as the management API lists them (``pid``, ``status``...)."""
        description = describe(self, model)
        return description[0].get("workers", []) if description else []

    def in_flight(self) -> int:
        """Batches computing now (their CPU slots held) and requests TorchServe's frontend has
        queued for a worker (``jobQueueStatus``): what a stop would lose. A model the
        management API cannot describe counts as one."""
        queued = 0
        for model in self.models:
            description = describe(self, model)
            status = description[0].get("jobQueueStatus", {}) if description else None
            queued += 1 if status is None else int(status.get("pendingRequests", 0))
        return queued + (self.cpu_slots.computing() if self.cpu_slots is not None else 0)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_file.exists():
            return "(no log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the process group (launcher, Java frontend, Python workers) and wait until
        every member has exited, not only the launcher: the frontend outlives it by a moment and
        holds the ports. SIGKILL what is left after ``timeout``."""
        if self.process is None:
            return
        group = self.process.pid
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while group_alive(group) and time.monotonic() < deadline:
                self.process.poll()  # reap the launcher as soon as it exits
                time.sleep(0.1)
            if not group_alive(group):
                break
        self.process.wait()
        shutil.rmtree(self._tmp_dir, ignore_errors=True)
        log.info("TorchServe stopped")
