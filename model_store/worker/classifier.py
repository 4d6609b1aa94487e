"""The serving core: bytes in, top-k predictions out, one error entry per bad image.

Independent of TorchServe on purpose: the TorchServe handler is a thin adapter over it, and the
gateway's in-process backend runs the very same code.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch._dynamo.utils import counters

from contract.answers import Failure, Predictions, Result
from contract.errors import (
    IMAGE_TOO_LARGE,
    INVALID_TENSOR,
    INVALID_TOP_K,
    NON_FINITE_OUTPUT,
    UNDECODABLE_IMAGE,
)
from contract.images import ImageError, ImageLimits, validate
from contract.protocol import (
    DEFAULT_BATCH_BUCKETS,
    DEFAULT_TOP_K,
    MAX_TOP_K,
    PIXEL_BOUND,
    PROBABILITIES_FIELD,
    TENSOR_CHANNELS,
)

from ..zoo.aot import AotMismatch, load_packages
from ..zoo.checkpoint import read_checkpoint
from ..zoo.labels import load_labels
from ..zoo.models import count_parameters, create_model, get_spec
from ..zoo.openvino_ir import OpenVinoUnavailable, load_ir
from ..zoo.optimize import InferenceModel, check_compile_mode, optimize_for_inference
from ..zoo.precision import FP32, PRECISIONS
from ..zoo.runtimes import DEFAULT_RUNTIME, RUNTIMES, Prebuilt
from .images import load_upright_rgb
from .pixel_budgets import BatchPixelBudget, PixelPool
from .transforms import crop_to_array, normalize, resize_side

log = logging.getLogger(__name__)

NON_FINITE = ImageError(
    NON_FINITE_OUTPUT, "the model's output for this input is not a number (NaN or infinity)"
)


def load_prebuilt(
    runtime: str,
    directory: Path,
    batch_sizes: Sequence[int],
    input_size: int,
    precision: str = FP32,
) -> Prebuilt:
    """What an archive built for ``runtime`` in ``precision``, loaded: AOTInductor packages
    (reported ``aot``) or an OpenVINO IR compiled per bucket (``openvino``)."""
    if runtime == "openvino":
        runners = load_ir(directory, batch_sizes, input_size, precision)
        return Prebuilt("openvino", runners, precision)
    return Prebuilt("aot", load_packages(directory, batch_sizes, input_size), precision)


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
    """``inductor`` or ``openvino`` (``model_store.zoo.runtimes``); ``compile=False`` runs eager."""
    aot_dir: Path | None = None
    """AOTInductor packages of the batch buckets (built with the archive), used when they match
    this machine; otherwise the model is compiled just in time."""
    openvino_dir: Path | None = None
    """The OpenVINO IR of the ``openvino`` runtime (built with the archive)."""
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
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        if self.runtime == "openvino" and self.openvino_dir is None:
            raise ValueError("the openvino runtime needs openvino_dir (the converted model)")
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
        for key in ("labels", "aot_dir", "openvino_dir"):
            if values.get(key):
                values[key] = base_dir / values[key]
        if "batch_buckets" in values:
            values["batch_buckets"] = tuple(values["batch_buckets"])
        return cls(**values)


def _graphs_made() -> int:
    return counters["stats"]["unique_graphs"]


def _error(exc: ImageError) -> Failure:
    return {"error": {"code": exc.code, "message": str(exc)}}


@dataclass(frozen=True)
class ClassifyRequest:
    """One client request among those a worker serves as one batch."""

    inputs: list[bytes | np.ndarray]
    top_k: int | None
    probabilities: bool


def tensor_input(data: bytes) -> np.ndarray:
    """A preprocessed input as it travels (float32, little-endian, row-major) -> the array
    ``ImageClassifier.classify`` takes; its shape is checked there, against the model."""
    if len(data) % 4:  # not whole float32 values: fails the check as raw bytes
        return np.frombuffer(data, dtype=np.uint8)
    return np.frombuffer(data, dtype="<f4").astype(np.float32, copy=False)


def _load_prebuilt(
    config: ClassifierConfig, device: torch.device, input_size: int
) -> tuple[Prebuilt | None, str | None]:
    """What the archive built for its runtime (AOTInductor packages or an OpenVINO IR), or none
    and why: then ``compile`` decides, just in time or eager."""
    directory = config.openvino_dir if config.runtime == "openvino" else config.aot_dir
    if directory is None or not config.compile:
        return None, None
    try:
        if device.type != "cpu":
            raise AotMismatch(f"the prebuilt models are for CPU, the model runs on {device}")
        prebuilt = load_prebuilt(
            config.runtime, directory, config.batch_buckets, input_size, config.precision
        )
        return prebuilt, None
    except (AotMismatch, OpenVinoUnavailable) as exc:
        warnings.warn(
            f"{config.runtime} models built ahead not used, compiling just in time: {exc}",
            stacklevel=3,
        )
        return None, str(exc)


class ImageClassifier:
    """A loaded, optimised and warmed-up model that classifies encoded images. ``load`` makes
    one (minutes when it compiles just in time); the constructor only holds what it made."""

    def __init__(
        self,
        config: ClassifierConfig,
        runner: InferenceModel,
        labels: list[str],
        input_size: int,
        info: Mapping[str, Any],
        graphs_before: int | None = None,
    ) -> None:
        self.config = config
        self._graphs_before = _graphs_made() if graphs_before is None else graphs_before
        self.runner = runner
        self.labels = labels
        self.input_size = input_size
        self.limits = config.limits
        self.draft_side = resize_side(input_size) if config.fast_decode else 0
        self.info = dict(info)
        self.decode_threads = max(1, torch.get_num_threads())
        self._decoder = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="decode")
        self._decoding = PixelPool(self.limits.max_pixels)

    @classmethod
    def load(cls, config: ClassifierConfig) -> ImageClassifier:
        """Read the weights, optimise (prebuilt runtime, or compile), warm every bucket up."""
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        started, graphs_before = time.perf_counter(), _graphs_made()
        checkpoint = read_checkpoint(config.weights)
        model = create_model(config.model, checkpoint=checkpoint)
        meta = checkpoint.meta
        labels = meta.get("labels") or load_labels(config.labels, model.num_classes)
        if len(labels) != model.num_classes:
            raise ValueError(f"{len(labels)} labels for {model.num_classes} classes")
        size = checkpoint.input_size
        prebuilt, fallback = _load_prebuilt(config, torch.device(device), size)
        runner = optimize_for_inference(
            model,
            device=device,
            compile=config.compile,
            mode=config.compile_mode,
            prebuilt=prebuilt,
        )
        total, attention = count_parameters(model)
        classifier = cls(
            config,
            runner,
            labels,
            size,
            {
                "model": config.model,
                "attention": get_spec(config.model).attention,
                "parameters": total,
                "attention_parameters": attention,
                "num_classes": model.num_classes,
                "input_size": size,
                "weights": meta.get("weights", "checkpoint"),
                "device": str(runner.device),
                "compile_requested": config.compile,
                "prebuilt_fallback": fallback,
                "batch_buckets": list(config.batch_buckets),
            },
            graphs_before,
        )
        warmup = classifier._warm_up()
        classifier.info |= {
            "runtime": runner.runtime,  # known once every bucket has run (jit may fall back)
            "precision": runner.precision,
            "compiled": runner.compiled,
            "compile_error": runner.compile_error,
            "load_seconds": round(time.perf_counter() - started, 2),
            "warmup_seconds": warmup,
        }
        log.info("loaded %s", classifier.info)
        return classifier

    @property
    def compiled_graphs(self) -> int:
        """Graphs torch.compile has made in this process since this classifier began loading:
        fixed after the warm-up when all is well (0 with prebuilt models); a rise under load
        means a request paid for compiling. (Dynamo counts per process: graphs another
        classifier of the same process compiles meanwhile count too.)"""
        return _graphs_made() - self._graphs_before

    def _warm_up(self) -> dict[str, float]:
        """Each bucket once, from the same preprocessing output and through the same padding
        as requests, so a request finds every graph, kernel and buffer already made."""
        seconds = {}
        size = self.input_size
        for bucket in self.config.batch_buckets:
            started = time.perf_counter()
            self.predict(normalize(np.zeros((bucket, size, size, 3), np.uint8)))
            seconds[str(bucket)] = round(time.perf_counter() - started, 2)
            log.info(
                "warm-up batch %d: %.2f s (%s)", bucket, seconds[str(bucket)], self.runner.runtime
            )
        return seconds

    def classify(
        self,
        inputs: Sequence[bytes | np.ndarray],
        top_k: int | Sequence[int] | None = None,
        probabilities: bool | Sequence[bool] = False,
    ) -> list[Result]:
        """One entry per input, in order: ``{"predictions": [...]}`` (and ``"probabilities"``,
        the full softmax, for each input that asks: one flag, or one per input) or
        ``{"error": {...}}`` (``contract.answers``). An input is an encoded image (bytes) or an
        already preprocessed one (an array, see ``tensor_input``).

        Every input is checked inside its own error handling, so a bad one fails alone: image
        headers and the batch's pixel budget first, in order; then the images are decoded and
        cropped on the worker's CPUs at once (``decode_threads``: Pillow releases the GIL, and
        the model does not run meanwhile), each reduced to its crop as soon as it is decoded.
        Images being decoded at once hold at most ``max_pixels`` between them (a lone larger
        one waits for the others), so memory holds no more than one largest allowed image, as
        when they were decoded one after the other."""
        if top_k is None:
            top_k = self.config.top_k
        ks = list(top_k) if isinstance(top_k, Sequence) else [top_k] * len(inputs)
        wants = (
            list(probabilities)
            if isinstance(probabilities, Sequence)
            else [probabilities] * len(inputs)
        )
        results: dict[int, Result] = {}  # by position: every input gets exactly one
        tensors, tensor_positions, headers, header_positions = [], [], [], []
        budget = BatchPixelBudget(self.limits.max_batch_pixels)
        for position, (item, k) in enumerate(zip(inputs, ks, strict=True)):
            try:
                if not 1 <= k <= MAX_TOP_K:
                    raise ImageError(INVALID_TOP_K, f"top_k must be in 1..{MAX_TOP_K}, got {k}")
                if isinstance(item, np.ndarray):
                    tensors.append(self._checked_tensor(item))
                    tensor_positions.append(position)
                else:
                    image = validate(item, self.limits)
                    budget.take(image.width * image.height)
                    headers.append(image)
                    header_positions.append(position)
            except ImageError as exc:
                results[position] = _error(exc)
        crops, crop_positions = [], []
        decoded = self._decoder.map(self._crop, headers)
        for position, crop in zip(header_positions, decoded, strict=True):
            if isinstance(crop, ImageError):
                results[position] = _error(crop)
            else:
                crops.append(crop)
                crop_positions.append(position)
        batch = ([normalize(np.stack(crops))] if crops else []) + (
            [torch.from_numpy(np.stack(tensors))] if tensors else []
        )
        rows = self.predict(torch.cat(batch)) if batch else torch.empty(0)
        for row, position in zip(rows, crop_positions + tensor_positions, strict=True):
            results[position] = self._answer(row, ks[position], wants[position])
        return [results[position] for position in range(len(inputs))]

    def _answer(self, row: torch.Tensor, top_k: int, probabilities: bool) -> Result:
        """One input's answer from its softmax row: a non-finite row fails this input alone
        (the other rows of the batch are its neighbours')."""
        if not torch.isfinite(row).all():
            return _error(NON_FINITE)
        scores, indices = row.topk(min(top_k, len(self.labels)))
        answer: Predictions = {
            "predictions": [
                {"index": int(i), "label": self.labels[int(i)], "score": float(s)}
                for s, i in zip(scores, indices, strict=True)
            ]
        }
        if probabilities:
            answer[PROBABILITIES_FIELD] = row.tolist()  # type: ignore[literal-required]
        return answer

    def _checked_tensor(self, tensor: np.ndarray) -> np.ndarray:
        """A preprocessed input as the model takes it, or ``invalid_tensor`` saying why not."""
        shape = (TENSOR_CHANNELS, self.input_size, self.input_size)
        if tensor.dtype != np.float32 or tensor.size != math.prod(shape):
            raise ImageError(
                INVALID_TENSOR,
                f"a preprocessed input must be {math.prod(shape):,} float32 values "
                f"{list(shape)}, got {tensor.size:,} {tensor.dtype}",
            )
        if not np.abs(tensor).max() <= PIXEL_BOUND:  # NaN compares false too
            raise ImageError(
                INVALID_TENSOR,
                f"a preprocessed input holds NaN, infinity or values beyond ±{PIXEL_BOUND:.2f}",
            )
        return tensor.reshape(shape)

    def _crop(self, image: Image.Image) -> np.ndarray | ImageError:
        """A validated image decoded and cropped, or the ``ImageError`` that says why not
        (returned, so one image's failure does not end the others' decoding). The image and its
        decoded pixels are closed as soon as the crop is made, before another may start."""
        try:
            with self._decoding.hold(image.width * image.height), closing(image):
                return crop_to_array(load_upright_rgb(image, self.draft_side), self.input_size)
        except MemoryError:
            return ImageError(IMAGE_TOO_LARGE, "not enough worker memory to decode it")
        except ImageError as exc:
            return exc
        except Exception:
            log.exception("decoding a %s image failed", image.format)
            return ImageError(UNDECODABLE_IMAGE, f"cannot decode this {image.format}")

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities; pads each chunk up to a warmed-up bucket so no request
        triggers a recompile (``dynamic=False`` graphs are specialised per batch size)."""
        largest = self.config.batch_buckets[-1]
        outputs = []
        for chunk in batch.split(largest):
            n = chunk.shape[0]
            bucket = next(b for b in self.config.batch_buckets if b >= n)
            if bucket > n:
                chunk = torch.cat([chunk, chunk.new_zeros(bucket - n, *chunk.shape[1:])])
            outputs.append(self.runner(chunk)[:n].softmax(dim=1).cpu())
        return torch.cat(outputs)
