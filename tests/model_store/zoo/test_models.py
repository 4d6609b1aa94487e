"""The registry: published parameter counts, shapes, and argument validation."""

from __future__ import annotations

import pytest
import torch

from model_store import MODELS, count_parameters, create_model, tiny_arch
from model_store.zoo.resnet import ResNet

PUBLISHED_PARAMS = {
    "resnet50": (25_557_032, 0),
    "se_resnet50": (28_088_024, 2_530_992),
    "eca_resnet50": (25_557_118, 86),  # adaptive k = 5, 5, 5, 7
    "cbam_resnet50": (28_089_624, 2_532_592),  # SE's MLP + 16 x (7x7x2 conv + BN affine)
    "sa_resnet50": (25_557_740, 708),
    "mobilenet_v2": (3_504_872, 0),  # torchvision's
    "eca_mobilenet_v2": (3_504_897, 25),  # the official code: k = 1 up to 96 channels, 3 above
}
"""The published counts of the served models (papers, timm); a new kind adds its own."""
ECA_K3557 = [{"kernel_size": k} for k in (3, 5, 5, 7)]
"""The official ECA-ResNet-50 weights' kernel size per stage."""


def test_the_published_models_are_registered():
    assert set(PUBLISHED_PARAMS) <= set(MODELS)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_counts_match_published_architectures(name):
    assert count_parameters(create_model(name)) == PUBLISHED_PARAMS[name]


def official_mobilenet_v2_parameters(eca: bool) -> int:
    """The count the official ECA-MobileNetV2 code's architecture gives, written out: stem,
    each inverted residual (expand, depthwise, project, each with BN; ECA's 1-D conv of k = 1
    up to 96 channels, else 3), the last 1x1 conv, the classifier."""
    table = [(1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1)]
    total, inp = 3 * 32 * 9 + 2 * 32, 32
    for t, c, n in table:
        for _ in range(n):
            hidden = inp * t
            expand = inp * hidden + 2 * hidden if t != 1 else 0
            total += expand + hidden * 9 + 2 * hidden + hidden * c + 2 * c
            total += (1 if c <= 96 else 3) if eca else 0
            inp = c
    return total + inp * 1280 + 2 * 1280 + 1280 * 1000 + 1000


def test_eca_mobilenet_v2_has_the_official_codes_parameter_count():
    """3,504,897: the paper's "3.34M" is the same count in units of 2**20."""
    assert count_parameters(create_model("mobilenet_v2"))[0] == official_mobilenet_v2_parameters(
        eca=False
    )
    total, attention = count_parameters(create_model("eca_mobilenet_v2"))
    assert total == official_mobilenet_v2_parameters(eca=True)
    assert round(total / 2**20, 2) == 3.34
    kernels = [block.attn.kernel_size for block in create_model("eca_mobilenet_v2").blocks()]
    assert kernels == [1] * 13 + [3] * 4 and attention == sum(kernels)


def test_eca_official_kernel_sizes_give_80_attention_params():
    model = create_model("eca_resnet50", stage_attn_kwargs=ECA_K3557)
    assert count_parameters(model) == (25_557_112, 80)
    assert [b.attn.kernel_size for b in model.blocks()] == [3] * 3 + [5] * 4 + [5] * 6 + [7] * 3


def test_torchvision_parameter_names():
    names = set(create_model("resnet50").state_dict())
    assert {
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.downsample.0.weight",
        "layer4.2.conv3.weight",
        "fc.bias",
    } <= names


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shape_and_attention_placement(name):
    model = create_model(name, num_classes=7, **tiny_arch(name)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    expected = None if MODELS[name].attention == "none" else MODELS[name].attention
    assert all((block.attn is None) == (expected is None) for block in model.blocks())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "vgg16"}, "unknown model 'vgg16'"),
        ({"name": "resnet50", "stage_attn_kwargs": [{"kernel_size": 3}] * 4}, "no attention"),
        ({"name": "se_resnet50", "kernel_size": 3}, "se attention: .*kernel_size"),
        ({"name": "resnet50", "layers": (1, 1, 1)}, "4 positive block counts"),
        ({"name": "resnet50", "num_classes": 0}, "num_classes must be positive"),
        ({"name": "eca_resnet50", "stage_attn_kwargs": ECA_K3557[:3]}, "one dict per stage"),
    ],
)
def test_bad_arguments_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model(**kwargs)


def test_model_records_its_architecture():
    model = create_model("eca_resnet50", num_classes=10, stage_attn_kwargs=ECA_K3557)
    assert isinstance(model, ResNet)
    assert model.arch["name"] == "eca_resnet50"
    assert model.arch["num_classes"] == 10
    assert model.arch["stage_attn_kwargs"][0] == {"kernel_size": 3}
