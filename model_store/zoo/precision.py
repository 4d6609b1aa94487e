"""The precisions a runtime can serve in, and how the low ones are made from the float32 model.

Plain names here (the gateway, which has no torch, reads them); the low precisions are made in
``low_precision.py``.

``fp32`` is exact (every runtime is checked against the eager model to ``MAX_LOGIT_ERROR``).
``bf16`` and ``int8`` run on this CPU class's matrix units (AMX-BF16, AMX-INT8/VNNI through
oneDNN) and change the answers a little; an archive in either is built only if it passes the
fidelity gate (``fidelity.py``) against the float32 eager model on held-out images.

- inductor, ``bf16``: the model's weights in bfloat16, the input cast to bfloat16 and the logits
  back to float32 inside the compiled graph, so the package still takes and returns float32.
- inductor, ``int8``: PyTorch 2 Export static post-training quantization with the x86 inductor
  quantizer (``torchao.quantization.pt2e``; torch 2.13 no longer carries it in ``torch.ao``),
  calibrated on images decoded as the worker decodes them, then compiled ahead of time: inductor
  lowers the quantize/dequantize pairs to oneDNN's int8 convolutions.
- openvino: ``bf16`` is the CPU plugin's inference precision hint on the float32 IR; ``int8`` is
  an IR quantized by NNCF on the same calibration images (``openvino_ir.py``).
"""

from __future__ import annotations

FP32, BF16, INT8 = "fp32", "bf16", "int8"
PRECISIONS = (FP32, BF16, INT8)
AUTO = "auto"
"""Build every allowed choice (runtime or precision), measure, keep the fastest that passes."""
PRECISION_CHOICES = (*PRECISIONS, AUTO)
DEFAULT_PRECISION = FP32
