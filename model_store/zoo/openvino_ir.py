"""The ``openvino`` runtime: the optimised model (BN folded, SE/ECA squeezed early) converted to an
OpenVINO IR when the archive is built, compiled by OpenVINO's CPU plugin per batch bucket at
load (about a second each, no C++ compiler, and the IR is not tied to one machine class).

OpenVINO is an optional dependency (``pip install .[openvino]``): imported only here, only when
an archive asks for this runtime.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .runtimes import Runner

IR_FILE = "model.xml"  # and model.bin beside it
CPU_PROPERTIES = {
    "PERFORMANCE_HINT": "LATENCY",
    # OpenVINO runs float32 models in bfloat16 on CPUs that have it (2x faster here, but logits
    # off by ~0.4): the served answers must be the model's own.
    "INFERENCE_PRECISION_HINT": "f32",
}


class OpenVinoUnavailable(RuntimeError):
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


def load_ir(directory: Path, batch_sizes: Sequence[int], input_size: int) -> dict[int, Runner]:
    """One runner per batch size, each an IR compiled for that static shape, with as many
    threads as torch has here (the worker's share of the CPUs)."""
    ov = _openvino()
    core = ov.Core()
    model = core.read_model(directory / IR_FILE)
    properties = {**CPU_PROPERTIES, "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    runners = {}
    for batch_size in batch_sizes:
        model.reshape([batch_size, 3, input_size, input_size])
        runners[batch_size] = _runner(core.compile_model(model, "CPU", properties))
    return runners


def _runner(compiled: Any) -> Runner:
    """An infer request per calling thread: a request is not safe to share between threads
    (the in-process backend may run batches concurrently)."""
    local = threading.local()

    def run(images: torch.Tensor) -> torch.Tensor:
        if (request := getattr(local, "request", None)) is None:
            request = local.request = compiled.create_infer_request()
        request.infer([np.ascontiguousarray(images.cpu().numpy())])
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return run
