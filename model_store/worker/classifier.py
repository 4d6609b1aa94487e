"""The serving core: bytes in, top-k predictions out, one error entry per bad image.

Independent of TorchServe on purpose: the TorchServe handler is a thin adapter over it, and the
gateway's in-process backend runs the very same code.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch._dynamo.utils import counters

from contract.answers import Result
from contract.errors import (
    IMAGE_TOO_LARGE,
    INVALID_TOP_K,
    UNDECODABLE_IMAGE,
)
from contract.images import ImageError, validate
from contract.protocol import MAX_TOP_K

from ..zoo.checkpoint import read_checkpoint
from ..zoo.labels import load_labels
from ..zoo.models import count_parameters, create_model, get_spec
from ..zoo.optimize import InferenceModel, optimize_for_inference
from ..zoo.runtimes import Prebuilt, PrebuiltUnusable, load_prebuilt
from .answers import answer, failure
from .config import ClassifierConfig
from .images import load_upright_rgb
from .inputs import checked_tensor
from .pixel_budgets import BatchPixelBudget, PixelPool
from .timing import Stopwatch
from .transforms import crop_to_array, normalize, resize_side

log = logging.getLogger(__name__)


def _graphs_made() -> int:
    return counters["stats"]["unique_graphs"]


def _load_prebuilt(
    config: ClassifierConfig, runner: InferenceModel, input_size: int
) -> tuple[Prebuilt | None, str | None]:
    """What the archive built for its runtime, made to run beside the optimised model, or none
    and why: then ``compile`` decides, just in time or eager."""
    directory = config.prebuilt_dir
    if directory is None or not config.compile:
        return None, None
    try:
        if runner.device.type != "cpu":
            raise PrebuiltUnusable(
                f"the prebuilt models are for CPU, the model runs on {runner.device}"
            )
        prebuilt = load_prebuilt(
            config.runtime,
            directory,
            config.batch_buckets,
            input_size,
            runner.model,
            config.precision,
        )
        return prebuilt, None
    except PrebuiltUnusable as exc:
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
        runner = optimize_for_inference(
            model, device=device, compile=config.compile, mode=config.compile_mode
        )
        prebuilt, fallback = _load_prebuilt(config, runner, size)
        runner.prebuilt = prebuilt
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
            "weight_packing": runner.weight_packing,
            "threads": torch.get_num_threads(),
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
        stopwatch: Stopwatch | None = None,
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
        when they were decoded one after the other. ``stopwatch`` (when given) gets the time of
        the ``decode`` part (headers to normalised pixels) and the ``model`` part."""
        stopwatch = stopwatch or Stopwatch()
        if top_k is None:
            top_k = self.config.top_k
        ks = list(top_k) if isinstance(top_k, Sequence) else [top_k] * len(inputs)
        wants = (
            list(probabilities)
            if isinstance(probabilities, Sequence)
            else [probabilities] * len(inputs)
        )
        results: dict[int, Result] = {}  # by position: every input gets exactly one
        with stopwatch.part("decode"):
            batch, positions = self._decoded(inputs, ks, results)
        with stopwatch.part("model"):
            rows = self.predict(torch.cat(batch)) if batch else torch.empty(0)
            for row, position in zip(rows, positions, strict=True):
                results[position] = answer(row, ks[position], wants[position], self.labels)
        return [results[position] for position in range(len(inputs))]

    def _decoded(
        self, inputs: Sequence[bytes | np.ndarray], ks: list[int], results: dict[int, Result]
    ) -> tuple[list[torch.Tensor], list[int]]:
        """The inputs that pass their checks and decode, as normalised batches (images, then
        tensors) with their positions; a failure for each other one, in ``results``."""
        tensors, tensor_positions, headers, header_positions = [], [], [], []
        budget = BatchPixelBudget(self.limits.max_batch_pixels)
        for position, (item, k) in enumerate(zip(inputs, ks, strict=True)):
            try:
                if not 1 <= k <= MAX_TOP_K:
                    raise ImageError(INVALID_TOP_K, f"top_k must be in 1..{MAX_TOP_K}, got {k}")
                if isinstance(item, np.ndarray):
                    tensors.append(checked_tensor(item, self.input_size))
                    tensor_positions.append(position)
                else:
                    image = validate(item, self.limits)
                    budget.take(image.width * image.height)
                    headers.append(image)
                    header_positions.append(position)
            except ImageError as exc:
                results[position] = failure(exc)
        crops, crop_positions = [], []
        decoded = self._decoder.map(self._crop, headers)
        for position, crop in zip(header_positions, decoded, strict=True):
            if isinstance(crop, ImageError):
                results[position] = failure(crop)
            else:
                crops.append(crop)
                crop_positions.append(position)
        batch = ([normalize(np.stack(crops))] if crops else []) + (
            [torch.from_numpy(np.stack(tensors))] if tensors else []
        )
        return batch, crop_positions + tensor_positions

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
