"""The low precisions of the inductor runtime, made from the optimised float32 model (see
``precision.py`` for what each one is and how it is checked)."""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any

import torch
from torch import nn

from .precision import BF16, INT8


class Bfloat16(nn.Module):
    """``model`` in bfloat16 behind a float32 interface (the cast is part of the graph)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).to(torch.bfloat16)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(torch.bfloat16)).float()


def _pt2e() -> Any:
    """torchao's PT2E quantization API (its CUDA kernels fail to load on a CPU build of torch,
    and it registers an enum torch's pytree now handles itself: harmless here, and not worth
    warnings at every build)."""
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchao.quantization.pt2e.quantize_pt2e as quantize_pt2e
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86

    return quantize_pt2e, x86


def quantize_int8(model: nn.Module, calibration: torch.Tensor, batch_size: int) -> nn.Module:
    """Static int8 post-training quantization of ``model`` (eval, channels_last float32):
    per-channel symmetric weights and per-tensor activation ranges observed on
    ``calibration`` (preprocessed images), in batches of ``batch_size``."""
    quantize_pt2e, x86 = _pt2e()
    example = calibration[:batch_size].contiguous(memory_format=torch.channels_last)
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    any_batch = ({0: torch.export.Dim("batch", min=1, max=1024)},)  # compiled per bucket later
    with torch.no_grad():
        exported = torch.export.export(model, (example,), dynamic_shapes=any_batch).module()
        prepared = quantize_pt2e.prepare_pt2e(exported, quantizer)
        for batch in calibration.split(batch_size):
            prepared(batch.contiguous(memory_format=torch.channels_last))
        return quantize_pt2e.convert_pt2e(prepared)


def lower(
    model: nn.Module, precision: str, calibration: torch.Tensor, batch_size: int
) -> nn.Module:
    """The float32 ``model`` as the inductor runtime compiles it in ``precision``."""
    if precision == BF16:
        return Bfloat16(model)
    if precision == INT8:
        return quantize_int8(model, calibration, batch_size)
    return model
