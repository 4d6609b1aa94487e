"""ResNet-50 (Bottleneck, 3-4-6-3) whose attention is a constructor argument.

Parameter names follow torchvision (``conv1``, ``layer1.0.conv2``, ``fc`` ...), so plain
ResNet checkpoints load as they are; the attention sits at ``layerX.Y.attn``, after the third
BN of each bottleneck and before the residual add, where the SE, ECA, CBAM and SA papers put it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import infer_architecture
from .layers import Attention, create_attn

RESNET50_LAYERS = (3, 4, 6, 3)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        attn_layer: str | None = None,
        attn_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        outplanes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, outplanes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(outplanes)
        self.attn: Attention | None = create_attn(attn_layer, outplanes, **(attn_kwargs or {}))
        # one module per use (as timm's act1..act3): PT2E quantizers match patterns by the
        # module that made each node, and one ReLU shared by three places is no pattern
        self.act1, self.act2, self.act3 = (nn.ReLU(inplace=True) for _ in range(3))
        self.downsample: nn.Sequential | None = None
        if stride != 1 or inplanes != outplanes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(outplanes),
            )
        # Inference-only rewrite, switched on by ``optimize_for_inference``: see ``_inner_gate``.
        self.squeeze_inner = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        inner = self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))
        out = self.bn3(self.conv3(inner))
        if self.attn is not None:
            out = out * self._inner_gate(inner) if self.squeeze_inner else self.attn(out)
        return self.act3(out + shortcut)

    def _inner_gate(self, inner: torch.Tensor) -> torch.Tensor:
        """The gate of a ``gate_from_mean`` attention from the 4x narrower inner activation.

        In eval mode conv3 (1x1) and bn3 are affine, so
        ``mean_hw(bn3(conv3(h))) == bn3(conv3(mean_hw(h)))`` exactly. Squeezing ``h`` instead
        of the wide output removes a full extra pass over the widest tensor of the block; the
        scale then joins the residual add and ReLU in one pointwise kernel.
        """
        pooled = F.linear(inner.mean((2, 3)), self.conv3.weight.flatten(1), self.conv3.bias)
        pooled = self.bn3(pooled[:, :, None, None]).flatten(1)  # Identity once BN is folded
        return self.attn.gate(pooled)[:, :, None, None]

    def conv_bn_pairs(self) -> Iterator[tuple[str, str]]:
        """Names of (conv, following BN) pairs that inference may fold together."""
        yield from (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))
        if self.downsample is not None:
            yield "downsample.0", "downsample.1"
        if self.attn is not None:
            yield from ((f"attn.{conv}", f"attn.{bn}") for conv, bn in self.attn.conv_bn_pairs())


class ResNet(nn.Module):
    """ImageNet ResNet with bottleneck blocks and optional per-block attention.

    ``stage_attn_kwargs`` gives one dict per stage merged over ``attn_kwargs``; it is how ECA's
    per-stage kernel sizes (the official 3, 5, 5, 7) are set, and what a checkpoint implies.
    ``layers`` and ``base_width`` shrink the same network for tiny trainable configurations.
    """

    tiny_arch: ClassVar[dict[str, Any]] = {"layers": (1, 1, 1, 1), "base_width": 32}
    tiny_steps: ClassVar[int] = 60
    """Training steps the tiny configuration needs on the synthetic shapes."""
    inner_squeeze: ClassVar[bool] = True
    """Its bottleneck can take a mean-gated attention's mean early (``Bottleneck._inner_gate``)."""
    """Same code path, about 1/40 of the compute: what tests train in seconds on a CPU."""

    def __init__(
        self,
        layers: Sequence[int] = RESNET50_LAYERS,
        num_classes: int = 1000,
        attn_layer: str | None = None,
        attn_kwargs: Mapping[str, Any] | None = None,
        stage_attn_kwargs: Sequence[Mapping[str, Any]] | None = None,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be 4 positive block counts, got {tuple(layers)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if stage_attn_kwargs is not None and len(stage_attn_kwargs) != 4:
            raise ValueError(
                f"stage_attn_kwargs needs one dict per stage (4), got {len(stage_attn_kwargs)}"
            )
        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = base_width
        for stage, blocks in enumerate(layers):
            planes = base_width * 2**stage
            kwargs = {
                **(attn_kwargs or {}),
                **(stage_attn_kwargs[stage] if stage_attn_kwargs else {}),
            }
            stage_blocks = []
            for index in range(blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                stage_blocks.append(Bottleneck(inplanes, planes, stride, attn_layer, kwargs))
                inplanes = planes * Bottleneck.expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*stage_blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        self.num_classes = num_classes
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def blocks(self) -> Iterator[Bottleneck]:
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            yield from stage  # type: ignore[misc]

    def conv_bn_pairs(self) -> Iterator[tuple[str, str]]:
        """Names of every (conv, following BN) pair in the network, for BN folding."""
        yield "conv1", "bn1"
        for stage in range(1, 5):
            for index, block in enumerate(getattr(self, f"layer{stage}")):
                for conv, bn in block.conv_bn_pairs():
                    yield f"layer{stage}.{index}.{conv}", f"layer{stage}.{index}.{bn}"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))

    @classmethod
    def import_keys(cls, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Published ResNet layouts are brought to these names when read
        (``checkpoint.convert_keys``)."""
        return dict(state_dict)

    @classmethod
    def arch_from_weights(cls, state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return infer_architecture(state_dict)

    @classmethod
    def create(
        cls,
        implied: Mapping[str, Any],
        num_classes: int | None,
        attn_layer: str,
        *,
        layers: Sequence[int] | None = None,
        base_width: int | None = None,
        stage_attn_kwargs: Sequence[Mapping[str, Any]] | None = None,
        **attn_kwargs: Any,
    ) -> ResNet:
        """Explicit arguments over what a checkpoint implies (``arch_from_weights``): shapes,
        and the attention's per-stage settings such as ECA's kernel sizes, each stage's
        settings under the ones given for every block. E.g. the official ECA kernel sizes:
        ``stage_attn_kwargs=[{"kernel_size": k} for k in (3, 5, 5, 7)]``."""
        stages = [
            {k: v for k, v in stage.items() if k not in attn_kwargs}
            for stage in implied.get("stage_attn_kwargs", ())
        ]
        arch: dict[str, Any] = {
            "layers": tuple(_first(layers, implied.get("layers"), RESNET50_LAYERS)),
            "num_classes": _first(num_classes, implied.get("num_classes"), 1000),
            "base_width": _first(base_width, implied.get("base_width"), 64),
            "attn_layer": attn_layer,
            "attn_kwargs": attn_kwargs,
            "stage_attn_kwargs": _first(stage_attn_kwargs, stages or None),
        }
        model = cls(**arch)
        model.arch = arch
        return model


def _first(*values: Any) -> Any:
    """The first value that is not None (0 and () are real choices, not "unset")."""
    return next((v for v in values if v is not None), None)
