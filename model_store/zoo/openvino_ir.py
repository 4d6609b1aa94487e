"""The ``openvino`` runtime: the optimised model (BN folded, SE/ECA squeezed early) converted to an
OpenVINO IR when the archive is built, compiled by OpenVINO's CPU plugin per batch bucket at
load (about a second each, no C++ compiler, and the IR is not tied to one machine class).

Precisions: ``fp32`` runs the float32 IR in float32; ``bf16`` the same IR with the CPU plugin's
bfloat16 inference precision; ``int8`` an IR quantized by NNCF (post-training, calibrated on
images) whose remaining float operations run in float32.

OpenVINO (and NNCF, for int8 builds) are optional dependencies (``pip install .[openvino]``):
imported only here, only when an archive asks for this runtime.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .precision import BF16, FP32, INT8
from .runtimes import BuildJob, PrebuiltUnusable, Runner, Runtime

IR_FILE = "model.xml"  # and model.bin beside it
CPU_PROPERTIES = {"PERFORMANCE_HINT": "LATENCY"}
INFERENCE_PRECISION = {FP32: "f32", BF16: "bf16", INT8: "f32"}
"""The CPU plugin's ``INFERENCE_PRECISION_HINT`` per served precision. Unset, OpenVINO runs
float32 models in bfloat16 on CPUs that have it: the precision must be the archive's choice.
On a CPU without bf16 instructions (AVX2 only) the plugin quietly compiles f32 instead: the
compiled model says which it took, and a bf16 archive that would run f32 does not load."""


class PrecisionUnavailable(PrebuiltUnusable):
    """This CPU would compute the IR in another precision than the archive's."""


class OpenVinoUnavailable(PrebuiltUnusable):
    """The ``openvino`` package is not installed in this environment."""


def _openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise OpenVinoUnavailable(
            "this archive serves with OpenVINO but the package is missing: "
            "pip install 'attention-serving[openvino]'"
        ) from None
    return openvino


def export_ir(model: nn.Module, input_size: int, directory: Path) -> Path:
    """Convert ``model`` (eval, on CPU) with a dynamic batch dimension and save it in float32."""
    ov = _openvino()
    example = torch.zeros(1, 3, input_size, input_size)
    with torch.no_grad():
        converted = ov.convert_model(
            model, example_input=example, input=[(-1, 3, input_size, input_size)]
        )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / IR_FILE
    ov.save_model(converted, path, compress_to_fp16=False)  # the default halves the weights
    return path


def quantize_ir(directory: Path, calibration: torch.Tensor, batch_size: int) -> Path:
    """Replace the float32 IR in ``directory`` by NNCF's int8 post-training quantization of it,
    with activation ranges from ``calibration`` (preprocessed images)."""
    ov = _openvino()
    try:
        import nncf
    except ImportError:
        raise OpenVinoUnavailable(
            "int8 OpenVINO archives are quantized with NNCF: "
            "pip install 'attention-serving[openvino]'"
        ) from None
    model = ov.Core().read_model(directory / IR_FILE)
    batches = [np.ascontiguousarray(b.numpy()) for b in calibration.split(batch_size)]
    quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))
    # OpenVINO maps the float32 weights from model.bin: writing over that file under the map is
    # a bus error. Saved beside it, then renamed over it (the old file lives on until unmapped).
    staged = directory / f"int8-{IR_FILE}"
    ov.save_model(quantized, staged, compress_to_fp16=False)
    for suffix in (".bin", ".xml"):
        staged.with_suffix(suffix).replace((directory / IR_FILE).with_suffix(suffix))
    return directory / IR_FILE


def load_ir(
    directory: Path, batch_sizes: Sequence[int], input_size: int, precision: str = FP32
) -> dict[int, Runner]:
    """One runner per batch size, each an IR compiled for that static shape in ``precision``,
    with as many threads as torch has here (the worker's share of the CPUs)."""
    ov = _openvino()
    core = ov.Core()
    model = core.read_model(directory / IR_FILE)
    properties = {
        **CPU_PROPERTIES,
        "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[precision],
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
    }
    runners = {}
    for batch_size in batch_sizes:
        model.reshape([batch_size, 3, input_size, input_size])
        compiled = core.compile_model(model, "CPU", properties)
        took = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if took != INFERENCE_PRECISION[precision]:
            raise PrecisionUnavailable(
                f"this CPU runs the {precision} IR in {took} (OpenVINO's inference precision): "
                "it has no instructions for it; build the archive for fp32"
            )
        runners[batch_size] = OpenVinoRunner(compiled)
    return runners


class OpenVinoRunner:
    """A compiled IR (``compiled``: what OpenVINO made of it, its execution graph included)
    with an infer request per calling thread: a request is not safe to share between threads
    (the in-process backend may run batches concurrently)."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self._local = threading.local()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if (request := getattr(self._local, "request", None)) is None:
            request = self._local.request = self.compiled.create_infer_request()
        request.infer([np.ascontiguousarray(images.cpu().numpy())])
        return torch.from_numpy(request.get_output_tensor(0).data.copy())


class OpenVino(Runtime):
    """The ``openvino`` runtime: an IR (int8: quantized by NNCF), compiled per bucket at load."""

    reported_as = "openvino"

    def build(self, job: BuildJob) -> None:
        job.progress(f"  OpenVINO IR ({job.precision})")
        export_ir(job.model, job.input_size, job.directory)
        if job.precision == INT8:
            job.progress("  quantizing the IR to int8 (NNCF)")
            quantize_ir(job.directory, job.calibration, job.batch_sizes[-1])

    def load(
        self,
        directory: Path,
        batch_sizes: Sequence[int],
        input_size: int,
        precision: str,
        model: nn.Module,
    ) -> dict[int, Runner]:
        return load_ir(directory, batch_sizes, input_size, precision)
