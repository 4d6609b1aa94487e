"""MobileNetV2 whose attention is a constructor argument: the ECA paper's cheap CPU model.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018; with ECA
after each inverted residual's projection BN, before the residual add, as the official
ECA-MobileNetV2 (BangguWu/ECANet) puts it, with its kernel sizes (1 up to 96 channels, 3 above:
25 attention parameters, 3,504,897 in all, the paper's "3.34M" counted in units of 2**20).

Parameter names follow torchvision's ``mobilenet_v2`` (``features.N.conv.*``, ``classifier.1``),
so its checkpoints load as they are; the attention sits at ``features.N.attn``, and the official
ECA layout (the attention as the last module of ``features.N.conv``) is renamed on import.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from .checkpoint import attention_kind
from .layers import Attention, attention_layer, create_attn
from .registry import NO_ATTENTION

INVERTED_RESIDUALS = (
    # expansion t, output channels c, blocks n, first stride s (the paper's Table 2)
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS, LAST_CHANNELS = 32, 1280
_OFFICIAL_ECA = re.compile(r"^(features\.\d+)\.conv\.\d+\.conv\.weight$")
_BLOCK_ATTENTION = re.compile(r"^features\.(\d+)\.attn\.(.+)$")


def official_eca_kernel(channels: int) -> dict[str, Any]:
    """The published ECA-MobileNetV2's kernel size for a block of ``channels`` outputs."""
    return {"kernel_size": 1 if channels <= 96 else 3}


def _conv_bn_relu6(inp: int, out: int, kernel: int = 3, stride: int = 1, groups: int = 1):
    return nn.Sequential(
        nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise 3x3, project (1x1, linear); attention on the projection, then
    the residual add when the shape allows it."""

    def __init__(
        self,
        inp: int,
        out: int,
        stride: int,
        expansion: int,
        attn_layer: str | None = None,
        attn_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        hidden = round(inp * expansion)
        self.use_residual = stride == 1 and inp == out
        layers = [] if expansion == 1 else [_conv_bn_relu6(inp, hidden, kernel=1)]
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)
        self.attn: Attention | None = create_attn(attn_layer, out, **(attn_kwargs or {}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.attn is not None:
            out = self.attn(out)
        return x + out if self.use_residual else out

    def conv_bn_pairs(self) -> Iterator[tuple[str, str]]:
        """(conv, following BN) names inside the block: each conv-BN-ReLU6, then projection."""
        *activated, project, bn = range(len(self.conv))
        for index in activated:
            yield f"conv.{index}.0", f"conv.{index}.1"
        yield f"conv.{project}", f"conv.{bn}"
        if self.attn is not None:
            yield from ((f"attn.{conv}", f"attn.{bn}") for conv, bn in self.attn.conv_bn_pairs())


class MobileNetV2(nn.Module):
    """ImageNet MobileNetV2 with optional per-block attention.

    ``block_attn_kwargs`` is one dict per inverted residual merged over ``attn_kwargs`` (what a
    checkpoint implies); ECA without either uses the official kernel sizes. ``width_mult``
    shrinks the same network for tiny trainable configurations.
    """

    tiny_arch: ClassVar[dict[str, Any]] = {"width_mult": 0.25}
    """Same code path, a fraction of the compute: what tests train in seconds on a CPU."""
    tiny_steps: ClassVar[int] = 120
    """Training steps the tiny configuration needs on the synthetic shapes (at 60 its BN
    statistics still lag: 55% held-out accuracy, 97% at 120)."""

    def __init__(
        self,
        num_classes: int = 1000,
        attn_layer: str | None = None,
        attn_kwargs: Mapping[str, Any] | None = None,
        block_attn_kwargs: Sequence[Mapping[str, Any]] | None = None,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        if num_classes < 1 or width_mult <= 0:
            raise ValueError(f"need num_classes >= 1 and width_mult > 0, got {num_classes}")
        outputs = [int(c * width_mult) for _, c, n, _ in INVERTED_RESIDUALS for _ in range(n)]
        if block_attn_kwargs is not None and len(block_attn_kwargs) != len(outputs):
            raise ValueError(
                f"block_attn_kwargs needs one dict per block ({len(outputs)}), "
                f"got {len(block_attn_kwargs)}"
            )
        inp = int(STEM_CHANNELS * width_mult)
        self.last_channels = int(LAST_CHANNELS * max(1.0, width_mult))
        features: list[nn.Module] = [_conv_bn_relu6(3, inp, stride=2)]
        index = 0
        for expansion, _, blocks, first_stride in INVERTED_RESIDUALS:
            for block in range(blocks):
                out = outputs[index]
                kwargs = self._attn_kwargs(attn_layer, out, attn_kwargs, block_attn_kwargs, index)
                stride = first_stride if block == 0 else 1
                features.append(InvertedResidual(inp, out, stride, expansion, attn_layer, kwargs))
                inp, index = out, index + 1
        features.append(_conv_bn_relu6(inp, self.last_channels, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channels, num_classes))
        self.num_classes = num_classes
        self._init_weights()

    @staticmethod
    def _attn_kwargs(
        attn_layer: str | None,
        channels: int,
        shared: Mapping[str, Any] | None,
        per_block: Sequence[Mapping[str, Any]] | None,
        index: int,
    ) -> dict[str, Any]:
        if per_block is not None:
            return {**(shared or {}), **per_block[index]}
        if attn_layer == "eca" and not shared:
            return official_eca_kernel(channels)
        return dict(shared or {})

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def blocks(self) -> Iterator[InvertedResidual]:
        yield from (m for m in self.features if isinstance(m, InvertedResidual))

    def conv_bn_pairs(self) -> Iterator[tuple[str, str]]:
        """Names of every (conv, following BN) pair in the network, for BN folding."""
        for index, module in enumerate(self.features):
            if isinstance(module, InvertedResidual):
                yield from ((f"features.{index}.{c}", f"features.{index}.{b}")
                            for c, b in module.conv_bn_pairs())  # fmt: skip
            else:
                yield f"features.{index}.0", f"features.{index}.1"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))

    @classmethod
    def import_keys(cls, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The official ECA-MobileNetV2 layout (the 1-D conv as the last module of
        ``features.N.conv``) -> ``features.N.attn.conv.weight``; other names as they are."""
        return {
            (f"{match[1]}.attn.conv.weight" if (match := _OFFICIAL_ECA.match(k)) and v.dim() == 3
             else k): v
            for k, v in state_dict.items()
        }  # fmt: skip

    @classmethod
    def create(
        cls,
        implied: Mapping[str, Any],
        num_classes: int | None,
        attn_layer: str,
        *,
        width_mult: float | None = None,
        block_attn_kwargs: Sequence[Mapping[str, Any]] | None = None,
        **attn_kwargs: Any,
    ) -> MobileNetV2:
        """Explicit arguments over what a checkpoint implies (``arch_from_weights``)."""
        arch = {
            "num_classes": num_classes or implied.get("num_classes", 1000),
            "attn_layer": attn_layer,
            "attn_kwargs": attn_kwargs,
            "block_attn_kwargs": block_attn_kwargs or implied.get("block_attn_kwargs"),
            "width_mult": width_mult or implied.get("width_mult", 1.0),
        }
        model = cls(**arch)
        model.arch = arch
        return model

    @classmethod
    def arch_from_weights(cls, state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Classes, width and each block's attention settings implied by a state_dict."""
        arch: dict[str, Any] = {}
        if "classifier.1.weight" in state_dict:
            arch["num_classes"] = state_dict["classifier.1.weight"].shape[0]
        if "features.0.0.weight" in state_dict:
            arch["width_mult"] = state_dict["features.0.0.weight"].shape[0] / STEM_CHANNELS
        blocks: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in state_dict.items():
            if match := _BLOCK_ATTENTION.match(key):
                blocks.setdefault(int(match[1]), {})[match[2]] = value
        kind = attention_kind(blocks.values())
        if kind != NO_ATTENTION:
            layer = attention_layer(kind)
            arch["block_attn_kwargs"] = [
                layer.kwargs_from_weights(blocks[i]) for i in sorted(blocks)
            ]
        return arch | {"attn_layer": kind}
