"""Runners of the optimised model per runtime and precision, for ``bench.models``: ours as an
archive serves it (built by the same code as ``python -m model_store build --precision``), and
the peers at the same precision
(OpenVINO's bf16 hint and NNCF int8; ONNX Runtime's fp32 and QDQ static int8, which has no bf16 on
CPU). Low precisions calibrate on the synthetic set the build uses by default."""

from __future__ import annotations

import io
import logging
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model_store.worker.archive import build_candidate
from model_store.worker.calibration import CalibrationSet, calibration_set
from model_store.zoo.precision import INT8

Run = Callable[[torch.Tensor], torch.Tensor]
log = logging.getLogger(__name__)


@cache
def calibration(size: int) -> CalibrationSet:
    """The synthetic set a build calibrates on without ``--calibration``."""
    return calibration_set(None, size)


def by_batch(runners: dict[int, Run]) -> Run:
    return lambda x: runners[x.shape[0]](x)


def archive_runner(runtime: str) -> Callable[[nn.Module, str, Sequence[int], int], Run]:
    """``runtime`` as an archive builds and serves it, in the precision asked (the archive's
    own ``build_candidate``: AOTInductor packages of the float32, bfloat16 or int8 model, or the
    OpenVINO IR, quantized for int8, loaded with the precision's hint). An inductor runner
    carries ``convolutions``: how many the generated code calls, and how many of those have the
    residual add fused in (oneDNN's binary post-op)."""

    def build(model: nn.Module, precision: str, batch_sizes: Sequence[int], size: int) -> Run:
        buckets = tuple(sorted(batch_sizes))
        with tempfile.TemporaryDirectory(prefix=f"bench-{runtime}-") as tmp:  # loaded: not needed
            prebuilt = build_candidate(
                runtime, precision, model, calibration(size), size, buckets, Path(tmp), log.debug
            )
            run = by_batch(prebuilt.runners)
            if runtime == "inductor":
                run.convolutions = convolutions(Path(tmp) / f"batch_{buckets[0]}.pt2")  # type: ignore[attr-defined]
            return run

    return build


def convolutions(package: Path) -> dict[str, int]:
    """Convolution calls in an AOTInductor package's generated code, and how many of them add
    the residual in the same call."""
    with zipfile.ZipFile(package) as archive:
        code = "".join(
            archive.read(name).decode() for name in archive.namelist() if name.endswith(".cpp")
        )
    calls = re.findall(r"aoti_torch_cpu_\w*conv\w*pointwise\w*", code)
    return {"calls": len(calls), "residual_fused": sum("binary" in c for c in calls)}


def onnxruntime_runner(
    model: nn.Module, precision: str, batch_sizes: Sequence[int], size: int
) -> Run:
    """ONNX Runtime on the same optimised model, as many threads as torch; int8 is its static
    QDQ quantization (per-channel int8 weights, uint8 activations) on the calibration images.
    Its threads stop spinning between calls: by default they spin on, and took half the CPU
    from whichever variant ran next in the interleaved rounds (measured)."""
    import onnxruntime

    exported = _onnx(model, size)
    if precision == INT8:
        exported = _onnx_int8(exported, calibration(size).calibration, max(batch_sizes))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(exported, options)
    return lambda x: torch.from_numpy(session.run(None, {"images": x.contiguous().numpy()})[0])


def _onnx(model: nn.Module, size: int) -> bytes:
    exported = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's notices, not our problems
        warnings.filterwarnings("ignore", "You are using the legacy", DeprecationWarning)
        warnings.filterwarnings("ignore", "Constant folding", UserWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, size, size),),
            exported,
            dynamo=False,
            input_names=["images"],
            dynamic_axes={"images": {0: "batch"}},
        )
    return exported.getvalue()


def _onnx_int8(fp32: bytes, calibration: torch.Tensor, batch_size: int) -> bytes:
    """ORT's recommended path: pre-processing first (shape inference, constant folding: the early
    squeeze's flattened conv3 weight must become a constant, or per-channel quantization
    treats it as an activation and fails), then static QDQ quantization."""
    from onnxruntime import quantization
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration.split(batch_size))

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": np.ascontiguousarray(batch.numpy())}

    with tempfile.TemporaryDirectory(prefix="bench-ort-") as tmp:
        source, folded, target = (Path(tmp) / f"{n}.onnx" for n in ("fp32", "folded", "int8"))
        source.write_bytes(fp32)
        quant_pre_process(str(source), str(folded), skip_symbolic_shape=True)
        quantization.quantize_static(
            str(folded),
            str(target),
            Batches(),
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=True,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
        )
        return target.read_bytes()


RUNTIME_BUILDERS: dict[str, Callable[[nn.Module, str, Sequence[int], int], Run]] = {
    "aot": archive_runner("inductor"),
    "openvino": archive_runner("openvino"),
    "onnxruntime": onnxruntime_runner,
}
UNAVAILABLE = {("onnxruntime", "bf16"): "ONNX Runtime's CPU provider has no bfloat16 kernels"}
