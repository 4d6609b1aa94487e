"""What a worker needs to serve one model: the ``handler`` section of an archive's
``model-config.yaml``, validated when it is read (a bad setting fails the worker's load, not a
request)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.images import ImageLimits
from contract.protocol import (
    DEFAULT_BATCH_BUCKETS,
    DEFAULT_TOP_K,
    MAX_TOP_K,
)

from ..zoo.models import get_spec
from ..zoo.optimize import check_compile_mode
from ..zoo.precision import FP32, PRECISIONS
from ..zoo.runtimes import DEFAULT_RUNTIME, RUNTIMES


@dataclass(frozen=True)
class ClassifierConfig:
    """What a worker needs to serve one model; read from the ``handler`` section of
    ``model-config.yaml`` inside the archive."""

    model: str
    weights: Path
    labels: Path | None = None
    compile: bool = True
    compile_mode: str = "default"
    batch_buckets: tuple[int, ...] = DEFAULT_BATCH_BUCKETS
    max_pixels: int = ImageLimits.max_pixels
    max_aspect_ratio: float = ImageLimits.max_aspect_ratio
    max_batch_pixels: int = ImageLimits.max_batch_pixels
    fast_decode: bool = False
    """Reduced-scale JPEG decode (libjpeg ``draft``): faster, but not the offline pixels."""
    top_k: int = DEFAULT_TOP_K
    device: str = "auto"
    runtime: str = DEFAULT_RUNTIME
    """A registered runtime (``model_store.zoo.runtimes``); ``compile=False`` runs eager."""
    prebuilt_dir: Path | None = None
    """What the archive built ahead for ``runtime`` (``Runtime.build``), used when it can serve
    here; otherwise (or without it) the model is compiled just in time."""
    precision: str = FP32
    """What the prebuilt models run in (``model_store.zoo.precision``); a just-in-time
    fallback runs float32."""

    @property
    def limits(self) -> ImageLimits:
        return ImageLimits(self.max_pixels, self.max_aspect_ratio, self.max_batch_pixels)

    def __post_init__(self) -> None:
        get_spec(self.model)  # unknown names fail here, at load
        buckets = self.batch_buckets
        if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
            raise ValueError(f"batch_buckets must be increasing positive sizes, got {buckets}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {tuple(RUNTIMES)}, got {self.runtime!r}")
        if self.runtime != DEFAULT_RUNTIME and self.prebuilt_dir is None:
            raise ValueError(f"the {self.runtime} runtime needs prebuilt_dir (built ahead)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be in 1..{MAX_TOP_K}, got {self.top_k}")
        check_compile_mode(self.compile_mode)
        self.limits  # noqa: B018 -- validates the image limits at load

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base_dir: Path) -> ClassifierConfig:
        known = set(cls.__dataclass_fields__)
        if unknown := set(values) - known:
            raise ValueError(
                f"unknown classifier settings {sorted(unknown)}; known: {sorted(known)}"
            )
        values = dict(values)
        values["weights"] = base_dir / values["weights"]
        for key in ("labels", "prebuilt_dir"):
            if values.get(key):
                values[key] = base_dir / values[key]
        if "batch_buckets" in values:
            values["batch_buckets"] = tuple(values["batch_buckets"])
        return cls(**values)
