"""Build one TorchServe archive (.mar) per model with torch-model-archiver.

An archive holds the weights (in this project's checkpoint format, with labels and input size),
the code a worker runs (``SERVING_CODE``: so a worker needs nothing from the gateway's
environment but torch, Pillow and numpy), and a ``model-config.yaml`` with TorchServe's batching
and worker settings plus the classifier's own (compile, buckets, limits) under ``handler``.
Building twice with the same inputs is a no-op: a fingerprint of the inputs sits beside each
archive (and with ``ARCHIVE_CACHE_DIR`` set, an archive of the same inputs built anywhere before
is copied from there: ``model_store.worker.archive_cache``).
"""

from __future__ import annotations

import hashlib
import importlib.util
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

from contract.protocol import (
    DEFAULT_BATCH_BUCKETS,
    GATEWAY_FED_BATCH_SIZE,
    WORKER_RESPONSE_TIMEOUT_S,
)

from ..zoo.aot import cpu_target, machine_key
from ..zoo.checkpoint import read_checkpoint, save_checkpoint
from ..zoo.fidelity import FidelityFailed, FidelityGate, logits_of, measure
from ..zoo.models import create_model
from ..zoo.optimize import optimize_for_inference
from ..zoo.precision import DEFAULT_PRECISION, FP32, PRECISION_CHOICES, PRECISIONS
from ..zoo.registry import ATTENTION_LAYERS, BACKBONES, NO_ATTENTION, get_spec
from ..zoo.runtimes import (
    AUTO,
    DEFAULT_RUNTIME,
    RUNTIMES,
    BuildJob,
    Prebuilt,
    PrebuiltUnusable,
    RuntimeCheckFailed,
    fastest,
    get_runtime,
    images_per_second,
    load_prebuilt,
    max_logit_error,
)
from . import archive_cache
from .calibration import CalibrationSet, calibration_set
from .config import ClassifierConfig

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).parents[1]
SOURCE_ROOT = PACKAGE_DIR.parent
SERVING_CODE = ("contract", "model_store/__init__.py", "model_store/zoo", "model_store/worker")
"""What travels inside every archive (under ``SOURCE_ROOT``): what the handler imports (the
worker, the zoo that builds and optimises the model, the contract with the gateway). The
launcher (``model_store.torchserve``), the demo models and the command line stay out: a worker
never runs them."""
DEFAULT_ARCHIVE_DIR = PACKAGE_DIR / "archives"
ARCHIVE_VERSION = "1.0"
RUNTIME_REPORT = "runtime.json"
"""The build's record inside an archive: what was asked, what serves, the checks and timings."""

PREBUILT_DIR = "prebuilt"
"""Where the serving runtime's prebuilt models sit inside the archive (``prebuilt_dir``)."""


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
    precision: str = DEFAULT_PRECISION  # or bf16, int8, or auto: each allowed one measured
    calibration: Path | None = None  # images to calibrate and check low precisions on
    fidelity: FidelityGate = field(default_factory=FidelityGate)  # what low precision must meet
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
        if self.runtime != AUTO and self.runtime not in RUNTIMES:
            choices = (*RUNTIMES, AUTO)
            raise ValueError(f"runtime must be one of {choices}, got {self.runtime!r}")
        if self.runtime != DEFAULT_RUNTIME and not self.compiles_ahead:
            raise ValueError(
                f"the {self.runtime} runtime is built with the archive: it needs compile and aot"
            )
        if self.precision not in PRECISION_CHOICES:
            raise ValueError(
                f"precision must be one of {PRECISION_CHOICES}, got {self.precision!r}"
            )
        if self.precision != DEFAULT_PRECISION and not self.compiles_ahead:
            raise ValueError(f"{self.precision} models are built with the archive: it needs aot")
        if self.calibration is not None and not self.calibration.is_dir():
            raise ValueError(f"calibration must be a folder of images, got {self.calibration}")
        for name in ("workers", "batch_size", "response_timeout_s", "startup_timeout_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_batch_delay_ms < 0:
            raise ValueError(f"max_batch_delay_ms must be >= 0, got {self.max_batch_delay_ms}")
        if not self.candidates:
            raise ValueError(f"the {self.runtime} runtime does not build {self.precision}")
        serving = DEFAULT_RUNTIME if self.runtime == AUTO else self.runtime
        # the worker's own checks of its settings (model, buckets, compile mode, limits, extra)
        ClassifierConfig.from_mapping(self.model_config(serving)["handler"], Path())

    @property
    def compiles_ahead(self) -> bool:
        return self.compile and self.aot

    @property
    def candidates(self) -> list[tuple[str, str]]:
        """The (runtime, precision) pairs this build makes, checks and, if several, measures."""
        runtimes = list(RUNTIMES) if self.runtime == AUTO else [self.runtime]
        asked = PRECISIONS if self.precision == AUTO else (self.precision,)
        return [
            (runtime, precision)
            for runtime in runtimes
            for precision in asked
            if precision in get_runtime(runtime).precisions
        ]

    def model_config(
        self, runtime: str = DEFAULT_RUNTIME, precision: str = DEFAULT_PRECISION
    ) -> dict[str, Any]:
        """TorchServe's settings and the classifier's, for the runtime and precision that serve
        (``auto`` is resolved when the archive is built)."""
        prebuilt = {"prebuilt_dir": PREBUILT_DIR} if self.compiles_ahead else {}
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
                "precision": precision,
                **prebuilt,
                **self.extra,
            },
        }


def _source_files() -> list[Path]:
    """The code a worker runs (``SERVING_CODE``), as paths under ``SOURCE_ROOT``."""
    return sorted(
        p
        for part in SERVING_CODE
        for p in ([SOURCE_ROOT / part] if part.endswith(".py") else (SOURCE_ROOT / part).rglob("*"))
        if p.is_file() and p.suffix in {".py", ".json"}
    )


def _plugin_files(spec: ArchiveSpec) -> list[Path]:
    """The modules of the backbone, attention layer and runtimes ``spec`` builds with, as the
    registries name them: a plug-in registered from outside the serving code (a test's toy
    runtime, a user's layer) decides the archive as much as the serving code does."""
    model = get_spec(spec.model)
    paths = [BACKBONES[model.backbone].network, *(RUNTIMES[r] for r, _ in spec.candidates)]
    if model.attention != NO_ATTENTION:
        paths.append(ATTENTION_LAYERS[model.attention])
    found = (importlib.util.find_spec(path.partition(":")[0]) for path in paths)
    return sorted({Path(module.origin) for module in found if module and module.origin})


def fingerprint(spec: ArchiveSpec) -> str:
    """The archive's inputs: its spec, the code and weights it holds, and the machines its
    candidates are compiled for (x86-64-v3 for float32: one archive serves both CPU classes
    these machines alternate between, and survives the switch)."""
    # the weights and calibration images count by content (below), not by where they lie
    fields = asdict(spec) | {
        "checkpoint": spec.checkpoint is not None,
        "calibration": spec.calibration is not None,
    }
    digest = hashlib.sha256(json.dumps(fields, default=str, sort_keys=True).encode())
    targets = [machine_key(cpu_target(precision)) for _, precision in spec.candidates]
    digest.update(json.dumps(targets, sort_keys=True).encode())
    files = _source_files() + _plugin_files(spec) + ([spec.checkpoint] if spec.checkpoint else [])
    if spec.calibration is not None:
        files += sorted(p for p in spec.calibration.rglob("*") if p.is_file())
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
    with archive_cache.claimed(spec.model, expected):  # one build of these inputs at a time
        cached = archive_cache.fetch(spec.model, expected, archive)
        if not cached:
            _build(spec, out_dir, archive, progress)
            archive_cache.store(spec.model, expected, archive)
    stamp.write_text(expected)
    if cached:
        progress(f"{spec.model}: the same inputs were built before, copied from the cache")
    else:
        progress(f"{spec.model}: built {archive} ({archive.stat().st_size / 2**20:.1f} MiB)")
    return archive


def _build(
    spec: ArchiveSpec, out_dir: Path, archive: Path, progress: Callable[[str], None]
) -> None:
    with tempfile.TemporaryDirectory(prefix=f"mar-{spec.model}-") as tmp:
        staging = Path(tmp)
        progress(f"{spec.model}: writing weights")
        weights = _write_weights(spec, staging / "weights.pt")
        code = staging / "code"
        for path in _source_files():
            target = code / path.relative_to(SOURCE_ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        runtime, precision = DEFAULT_RUNTIME, DEFAULT_PRECISION
        if spec.compiles_ahead:
            report = build_runtimes(spec, weights, code, progress)
            (code / RUNTIME_REPORT).write_text(json.dumps(report, indent=2) + "\n")
            runtime, precision = report["serving"], report["precision"]
        config = staging / "model-config.yaml"
        config.write_text(yaml.safe_dump(spec.model_config(runtime, precision), sort_keys=False))
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


def candidate_name(runtime: str, precision: str) -> str:
    """How the runtime report names a built candidate: ``inductor``, ``openvino-int8``..."""
    return runtime if precision == FP32 else f"{runtime}-{precision}"


def parse_candidate_name(name: str) -> tuple[str, str]:
    """``openvino-int8`` -> (``openvino``, ``int8``); no suffix is float32."""
    runtime, _, precision = name.partition("-")
    return runtime, precision or FP32


def build_runtimes(
    spec: ArchiveSpec, weights: Path, code: Path, progress: Callable[[str], None]
) -> dict[str, Any]:
    """The archive's own weights, optimised as the worker would, built for every (runtime,
    precision) the spec allows under ``code``, each checked: float32 against the eager model on
    fresh inputs (``MAX_LOGIT_ERROR``), bf16 and int8 against the eager model's answers on
    held-out images (``spec.fidelity``). With several that pass, the fastest is measured here
    and kept, the others removed. Returns the report stored in the archive."""
    checkpoint = read_checkpoint(weights)
    eager = create_model(spec.model, checkpoint=checkpoint).eval()
    optimized = optimize_for_inference(eager, compile=False).model
    size, buckets = checkpoint.input_size, spec.batch_buckets
    images = reference = None
    if any(precision != FP32 for _, precision in spec.candidates):
        images = calibration_set(spec.calibration, size)
        progress(f"{spec.model}: calibrating on and checking against {images.source}")
        reference = logits_of(lambda _: eager, images.held_out, buckets[-1])
    candidates: dict[str, Prebuilt] = {}
    errors, fidelity, rejected = {}, {}, {}
    for runtime, precision in spec.candidates:
        name = candidate_name(runtime, precision)
        directory = code / "candidates" / name
        try:
            prebuilt = build_candidate(
                runtime, precision, optimized, images, size, buckets, directory, progress
            )
            if precision == FP32:
                errors[name] = max_logit_error(prebuilt, eager, size)
                progress(f"{spec.model}: {name} max abs logit error {errors[name]:.1e}")
            if images is not None and reference is not None:
                fidelity[name] = _fidelity(spec, name, prebuilt, images, reference, progress)
        except (RuntimeCheckFailed, FidelityFailed, PrebuiltUnusable) as exc:
            if len(spec.candidates) == 1:
                raise
            rejected[name] = str(exc)  # and a precision this CPU does not compute in
            continue
        candidates[name] = prebuilt
    if not candidates:
        raise RuntimeCheckFailed(f"{spec.model}: no candidate passed its check: {rejected}")
    measured = {}
    if len(candidates) > 1:
        progress(f"{spec.model}: measuring {' vs '.join(candidates)} (interleaved)")
        measured = images_per_second(candidates, size, progress=progress)
    chosen = fastest(measured) if measured else next(iter(candidates))
    runtime, precision = parse_candidate_name(chosen)
    (code / "candidates" / chosen).rename(code / PREBUILT_DIR)
    shutil.rmtree(code / "candidates")
    progress(f"{spec.model}: serving with {runtime} in {precision}")
    return {
        "asked": spec.runtime,
        "asked_precision": spec.precision,
        "serving": runtime,
        "precision": precision,
        "max_abs_logit_error": errors,
        "fidelity": fidelity,
        "gate": asdict(spec.fidelity),
        "calibration": images.describe() if images is not None else None,
        "rejected": rejected,
        "img_per_s": measured,
        "threads": torch.get_num_threads(),
        "weight_packing": get_runtime(runtime).weight_packing(code / PREBUILT_DIR),
        "machine": machine_key(),
    }


def build_candidate(
    runtime: str,
    precision: str,
    optimized: torch.nn.Module,
    images: CalibrationSet | None,
    size: int,
    buckets: tuple[int, ...],
    directory: Path,
    progress: Callable[[str], None] = log.info,
) -> Prebuilt:
    """One candidate's prebuilt models, written to ``directory`` and loaded from there."""
    calibration = images.calibration if images is not None else torch.empty(0)
    job = BuildJob(optimized, precision, calibration, buckets, size, directory, progress)
    get_runtime(runtime).build(job)
    return load_prebuilt(runtime, directory, buckets, size, optimized, precision)


def _fidelity(
    spec: ArchiveSpec,
    name: str,
    prebuilt: Prebuilt,
    images: CalibrationSet,
    reference: torch.Tensor,
    progress: Callable[[str], None],
) -> dict[str, float]:
    """``prebuilt``'s answers on the held-out images against the eager model's; a low
    precision that misses the gate raises ``FidelityFailed`` naming the numbers."""
    largest = spec.batch_buckets[-1]
    measured = measure(logits_of(prebuilt.runners.__getitem__, images.held_out, largest), reference)
    progress(
        f"{spec.model}: {name} on {len(images.held_out)} held-out images: top-1 agreement "
        f"{measured['top1_agreement']:.4f}, top-5 overlap {measured['top5_overlap']:.4f}, max "
        f"probability shift {measured['max_probability_shift']:.4f}, max logit error "
        f"{measured['max_abs_logit_error']:.3f}"
    )
    if prebuilt.precision != FP32 and (failed := spec.fidelity.failures(measured)):
        raise FidelityFailed(f"{spec.model}: {name} misses the fidelity gate: {'; '.join(failed)}")
    return measured


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
