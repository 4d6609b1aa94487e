"""Inference optimisation: fold BN, squeeze SE/ECA early, channels_last, torch.compile.

Every step is exact up to float rounding; ``tests/model_store/zoo/test_optimize.py`` compares
logits before and after.
"""

from __future__ import annotations

import copy
import warnings
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .precision import FP32
from .resnet import ResNet
from .runtimes import NOT_PACKED, PACKED_AT_LOAD, Prebuilt

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_compile_mode(mode: str) -> None:
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of {COMPILE_MODES}")


RECOMPILE_LIMIT = 64
"""Graphs per code object. Every model shares ``ResNet.forward``, and each (model, batch size)
is one graph; dynamo's default of 8 would silently run eager past the eighth."""


def _configure_dynamo() -> None:
    """Enough room for every served (model, bucket), and a hit on the limit raises instead of
    silently running eager, so ``InferenceModel`` reports the path that really runs."""
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    dynamo_config.accumulated_recompile_limit = max(
        dynamo_config.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT
    )
    dynamo_config.fail_on_recompile_limit_hit = True


def fold_batchnorm(model: ResNet) -> ResNet:
    """Fold every BN into the conv before it (in place; the model must be in eval mode)."""
    if model.training:
        raise ValueError("fold_batchnorm needs an eval-mode model: call model.eval() first")
    for conv_name, bn_name in list(model.conv_bn_pairs()):
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if isinstance(bn, nn.BatchNorm2d):
            model.set_submodule(conv_name, fuse_conv_bn_eval(conv, bn))
            model.set_submodule(bn_name, nn.Identity())
    return model


def enable_inner_squeeze(model: ResNet) -> int:
    """Switch blocks whose attention gates from the mean (SE, ECA) to the exact early squeeze;
    returns how many blocks use it."""
    count = 0
    for block in model.blocks():
        if block.attn is not None and block.attn.gate_from_mean and hasattr(block, "squeeze_inner"):
            block.squeeze_inner = True
            count += 1
    return count


def _freezing(device: torch.device) -> AbstractContextManager[None]:
    """Inductor's CPU freezing: weights become constants, prepacked into oneDNN's blocked
    layouts once. It must be on while dynamo *traces*, not only in ``torch.compile(options=)``
    (which reaches inductor alone): dynamo installs parameters as graph constants only when it
    sees the global flag, and without that every convolution reordered its weights on every
    call (1.35x slower at batch 1, see bench/README.md)."""
    if device.type != "cpu":
        return nullcontext()
    return torch._inductor.config.patch(freezing=True)


class InferenceModel:
    """An optimised classifier: float32 images in, float32 logits out, on ``device``.

    ``runtime`` says which path runs: a prebuilt one made when the archive was built (``aot``,
    AOTInductor packages, or ``openvino``; one runner per batch size, given as ``prebuilt``),
    ``jit`` (``torch.compile``, tried on the first call for each input shape with
    ``dynamic=False``: one specialised graph per served batch size; if compilation fails the
    model warns once and runs eager from then on) or ``eager``.
    """

    def __init__(
        self,
        model: ResNet,
        *,
        device: torch.device,
        dtype: torch.dtype | None,
        compile: bool,
        mode: str,
        prebuilt: Prebuilt | None = None,
    ) -> None:
        self.model = model
        self.prebuilt = prebuilt
        self.device = device
        self.dtype = dtype
        self.compile_requested = compile
        self.compile_error: str | None = None
        self._compiled = None
        if compile:
            _configure_dynamo()
            options = torch._inductor.list_mode_options(mode)
            self._compiled = torch.compile(model, dynamic=False, options=options)

    @property
    def runtime(self) -> str:
        if self.prebuilt is not None:
            return self.prebuilt.runtime
        return "jit" if self._compiled is not None else "eager"

    @property
    def compiled(self) -> bool:
        return self.runtime != "eager"

    @property
    def weight_packing(self) -> str:
        """When the weights were packed for the CPU's kernels (``runtimes.PACKED_AT_LOAD``...):
        a prebuilt runtime says; ``torch.compile``'s freezing packs them in this process."""
        if self.prebuilt is not None:
            return self.prebuilt.weight_packing
        return PACKED_AT_LOAD if self._compiled is not None else NOT_PACKED

    @property
    def precision(self) -> str:
        """What the model runs in: a prebuilt one's own, else float32 (on CUDA, with autocast
        to ``dtype``)."""
        return self.prebuilt.precision if self.prebuilt is not None else FP32

    def _autocast(self) -> torch.autocast | nullcontext[None]:
        if self.dtype is None or self.device.type == "cpu":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Always a fresh inference tensor as input: dynamo's guards include the tensor's
        dispatch keys, so an input made outside inference mode and one made inside would each
        compile their own graph (the first request after warm-up paid seconds for that)."""
        x = images.to(self.device, memory_format=torch.channels_last, non_blocking=True, copy=True)
        if self.prebuilt and (run := self.prebuilt.runners.get(x.shape[0])) is not None:
            return run(x).float()
        with self._autocast():
            if self._compiled is not None:
                try:
                    with _freezing(self.device):
                        return self._compiled(x).float()
                except Exception as exc:  # the eager retry below re-raises real input errors
                    self._fall_back(exc)
            return self.model(x).float()

    def _fall_back(self, exc: Exception) -> None:
        self.compile_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        warnings.warn(
            f"torch.compile failed, running eager instead: {self.compile_error}", stacklevel=3
        )
        self._compiled = None


def optimize_for_inference(
    model: ResNet,
    *,
    device: str | torch.device = "cpu",
    compile: bool = True,
    mode: str = "default",
    dtype: torch.dtype | None = None,
    fold_bn: bool = True,
    squeeze_inner: bool = True,
    prebuilt: Prebuilt | None = None,
) -> InferenceModel:
    """Eval mode, BN folded, SE/ECA squeezed early, channels_last, compiled; on CUDA, autocast
    to ``dtype`` (bf16 unless told otherwise). The caller's model is left untouched."""
    check_compile_mode(mode)
    device = torch.device(device)
    if device.type == "cuda" and dtype is None:
        dtype = torch.bfloat16
    model = copy.deepcopy(model).eval()
    if fold_bn:
        fold_batchnorm(model)
    if squeeze_inner:
        enable_inner_squeeze(model)
    model = model.to(device).to(memory_format=torch.channels_last)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return InferenceModel(
        model, device=device, dtype=dtype, compile=compile, mode=mode, prebuilt=prebuilt
    )
