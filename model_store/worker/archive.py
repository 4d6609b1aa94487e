"""Build one TorchServe archive (.mar) per model with torch-model-archiver.

An archive holds the weights (in this project's checkpoint format, with labels and input size),
the ``model_store`` package itself (so a worker needs nothing from the gateway's environment but
torch, Pillow and numpy), and a ``model-config.yaml`` with TorchServe's batching and worker
settings plus the classifier's own (compile, buckets, limits) under ``handler``. Building twice
with the same inputs is a no-op: a fingerprint of the inputs sits beside each archive.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..zoo.aot import compile_packages, machine_key
from ..zoo.checkpoint import read_checkpoint, save_checkpoint
from ..zoo.models import create_model
from ..zoo.openvino_ir import export_ir
from ..zoo.optimize import optimize_for_inference
from ..zoo.runtimes import (
    AUTO,
    DEFAULT_RUNTIME,
    RUNTIME_CHOICES,
    RUNTIMES,
    RuntimeCheckFailed,
    fastest,
    images_per_second,
    max_logit_error,
)
from .classifier import ClassifierConfig, load_prebuilt
from .protocol import DEFAULT_BATCH_BUCKETS, GATEWAY_FED_BATCH_SIZE, WORKER_RESPONSE_TIMEOUT_S

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).parents[1]
"""The whole ``model_store`` package: it travels inside every archive."""
DEFAULT_ARCHIVE_DIR = PACKAGE_DIR / "archives"
ARCHIVE_VERSION = "1.0"
RUNTIME_REPORT = "runtime.json"
"""The build's record inside an archive: what was asked, what serves, the checks and timings."""

PREBUILT_DIRS = {"inductor": ("aot_dir", "aoti"), "openvino": ("openvino_dir", "openvino")}
"""Per runtime: the classifier setting naming its prebuilt models, and their folder inside the
archive."""


@dataclass(frozen=True)
class ArchiveSpec:
    """Everything that decides an archive's content (and so its fingerprint)."""

    model: str
    checkpoint: Path | None = None
    seed: int = 0
    compile: bool = True
    compile_mode: str = "default"
    batch_buckets: tuple[int, ...] = DEFAULT_BATCH_BUCKETS
    runtime: str = DEFAULT_RUNTIME  # or openvino, or auto: both built and measured, faster kept
    aot: bool = True  # inductor: AOTInductor packages built here, JIT only as fallback
    batch_size: int = GATEWAY_FED_BATCH_SIZE  # more only for clients calling TorchServe directly
    max_batch_delay_ms: int = 10
    workers: int = 1
    fast_decode: bool = False  # reduced-scale JPEG decode: faster, not the offline pixels
    response_timeout_s: int = WORKER_RESPONSE_TIMEOUT_S
    startup_timeout_s: int = 900  # compiling every bucket on a 2-core CPU takes minutes
    extra: dict[str, Any] = field(default_factory=dict)  # more ``handler`` settings

    def __post_init__(self) -> None:
        """Refuse here what would otherwise build fine and fail inside TorchServe."""
        if self.runtime not in RUNTIME_CHOICES:
            raise ValueError(f"runtime must be one of {RUNTIME_CHOICES}, got {self.runtime!r}")
        if self.runtime != DEFAULT_RUNTIME and not self.compiles_ahead:
            raise ValueError(
                f"the {self.runtime} runtime is built with the archive: it needs compile and aot"
            )
        for name in ("workers", "batch_size", "response_timeout_s", "startup_timeout_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_batch_delay_ms < 0:
            raise ValueError(f"max_batch_delay_ms must be >= 0, got {self.max_batch_delay_ms}")
        serving = DEFAULT_RUNTIME if self.runtime == AUTO else self.runtime
        # the worker's own checks of its settings (model, buckets, compile mode, limits, extra)
        ClassifierConfig.from_mapping(self.model_config(serving)["handler"], Path())

    @property
    def compiles_ahead(self) -> bool:
        return self.compile and self.aot

    def model_config(self, runtime: str = DEFAULT_RUNTIME) -> dict[str, Any]:
        """TorchServe's settings and the classifier's, for the runtime that serves (``auto``
        is resolved when the archive is built)."""
        setting, directory = PREBUILT_DIRS[runtime]
        prebuilt = {setting: directory} if self.compiles_ahead else {}
        return {
            "minWorkers": self.workers,
            "maxWorkers": self.workers,
            "batchSize": self.batch_size,
            "maxBatchDelay": self.max_batch_delay_ms,
            "responseTimeout": self.response_timeout_s,
            "startupTimeout": self.startup_timeout_s,
            "handler": {
                "model": self.model,
                "weights": "weights.pt",
                "compile": self.compile,
                "compile_mode": self.compile_mode,
                "batch_buckets": list(self.batch_buckets),
                "fast_decode": self.fast_decode,
                "runtime": runtime,
                **prebuilt,
                **self.extra,
            },
        }


def _source_files() -> list[Path]:
    return sorted(
        p
        for p in PACKAGE_DIR.rglob("*")
        if p.is_file()
        and p.suffix in {".py", ".json"}
        and "archives" not in p.relative_to(PACKAGE_DIR).parts
    )


def fingerprint(spec: ArchiveSpec) -> str:
    digest = hashlib.sha256(json.dumps(asdict(spec), default=str, sort_keys=True).encode())
    digest.update(json.dumps(machine_key(), sort_keys=True).encode())
    files = _source_files() + ([spec.checkpoint] if spec.checkpoint else [])
    for path in files:
        digest.update(str(path.name).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def build_archive(
    spec: ArchiveSpec,
    out_dir: Path = DEFAULT_ARCHIVE_DIR,
    progress: Callable[[str], None] = log.info,
) -> Path:
    """Write ``<out_dir>/<model>.mar`` unless an archive of the same inputs is already there."""
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / f"{spec.model}.mar"
    stamp = out_dir / f"{spec.model}.fingerprint"
    expected = fingerprint(spec)
    if archive.exists() and stamp.exists() and stamp.read_text() == expected:
        progress(f"{spec.model}: up to date ({archive})")
        return archive
    with tempfile.TemporaryDirectory(prefix=f"mar-{spec.model}-") as tmp:
        staging = Path(tmp)
        progress(f"{spec.model}: writing weights")
        weights = _write_weights(spec, staging / "weights.pt")
        code = staging / "code"
        for path in _source_files():
            target = code / "model_store" / path.relative_to(PACKAGE_DIR)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        runtime = DEFAULT_RUNTIME
        if spec.compiles_ahead:
            report = build_runtimes(spec, weights, code, progress)
            (code / RUNTIME_REPORT).write_text(json.dumps(report, indent=2) + "\n")
            runtime = report["serving"]
        config = staging / "model-config.yaml"
        config.write_text(yaml.safe_dump(spec.model_config(runtime), sort_keys=False))
        progress(f"{spec.model}: packing {archive.name}")
        command = [
            str(Path(sys.executable).parent / "torch-model-archiver"),
            "--model-name", spec.model,
            "--version", ARCHIVE_VERSION,
            "--serialized-file", str(weights),
            "--handler", str(code / "model_store" / "worker" / "handler.py"),
            "--extra-files", str(code),
            "--config-file", str(config),
            "--export-path", str(out_dir),
            "--force",
        ]  # fmt: skip
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"torch-model-archiver failed for {spec.model}:\n{proc.stderr}")
    stamp.write_text(expected)
    progress(f"{spec.model}: built {archive} ({archive.stat().st_size / 2**20:.1f} MiB)")
    return archive


def build_runtimes(
    spec: ArchiveSpec, weights: Path, code: Path, progress: Callable[[str], None]
) -> dict[str, Any]:
    """The archive's own weights, optimised as the worker would, built for the asked runtime
    (both for ``auto``) under ``code``, each checked against the eager model; for ``auto`` the
    faster is measured here and the other removed. Returns the report stored in the archive."""
    checkpoint = read_checkpoint(weights)
    eager = create_model(spec.model, checkpoint=checkpoint).eval()
    optimized = optimize_for_inference(eager, compile=False).model
    size, buckets = checkpoint.input_size, spec.batch_buckets
    asked = list(RUNTIMES) if spec.runtime == AUTO else [spec.runtime]
    candidates, errors, rejected = {}, {}, {}
    for runtime in asked:
        directory = code / PREBUILT_DIRS[runtime][1]
        if runtime == "openvino":
            progress(f"{spec.model}: converting to OpenVINO IR")
            export_ir(optimized, size, directory)
        else:
            progress(f"{spec.model}: compiling ahead of time (AOTInductor), one package per bucket")
            compile_packages(optimized, buckets, size, directory, progress)
        candidates[runtime] = load_prebuilt(runtime, directory, buckets, size)
        try:
            errors[runtime] = max_logit_error(candidates[runtime], eager, size)
            progress(f"{spec.model}: {runtime} max abs logit error {errors[runtime]:.1e}")
        except RuntimeCheckFailed as exc:
            if spec.runtime != AUTO:
                raise
            rejected[runtime] = str(exc)
            del candidates[runtime]
    if not candidates:
        raise RuntimeCheckFailed(f"{spec.model}: no runtime passed the check: {rejected}")
    measured = {}
    if len(candidates) > 1:
        progress(f"{spec.model}: measuring {' vs '.join(candidates)} (interleaved)")
        measured = images_per_second(candidates, size, progress=progress)
    serving = fastest(measured) if measured else next(iter(candidates))
    for runtime in set(asked) - {serving}:
        shutil.rmtree(code / PREBUILT_DIRS[runtime][1])
    progress(f"{spec.model}: serving with {serving}")
    return {
        "asked": spec.runtime,
        "serving": serving,
        "max_abs_logit_error": errors,
        "rejected": rejected,
        "img_per_s": measured,
        "threads": torch.get_num_threads(),
        "machine": machine_key(),
    }


def _write_weights(spec: ArchiveSpec, path: Path) -> Path:
    if spec.checkpoint is not None:
        source = read_checkpoint(spec.checkpoint)
        model = create_model(spec.model, checkpoint=source)
        meta = {k: v for k, v in source.meta.items() if k in ("labels", "input_size")}
        return save_checkpoint(model, path, weights=f"checkpoint {spec.checkpoint.name}", **meta)
    torch.manual_seed(spec.seed)
    model = create_model(spec.model)
    return save_checkpoint(model, path, weights=f"UNTRAINED: seeded random init (seed {spec.seed})")


def read_model_config(path: Path) -> dict[str, Any]:
    """The ``model-config.yaml`` of a built archive (TorchServe's settings and ``handler``)."""
    with zipfile.ZipFile(path) as archive:
        return yaml.safe_load(archive.read("model-config.yaml")) or {}


def read_runtime_report(path: Path) -> dict[str, Any]:
    """The build's runtime record of an archive compiled ahead (``RUNTIME_REPORT``)."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read(RUNTIME_REPORT))


def load_archive(path: Path, extract_to: Path) -> ClassifierConfig:
    """Unpack a ``.mar`` and read its classifier settings: what a TorchServe worker does at load."""
    if not path.exists():
        raise FileNotFoundError(f"no archive {path}: run `python -m model_store build`")
    with zipfile.ZipFile(path) as archive:
        archive.extractall(extract_to)
    config = yaml.safe_load((extract_to / "model-config.yaml").read_text()) or {}
    return ClassifierConfig.from_mapping(config.get("handler", {}), extract_to)
