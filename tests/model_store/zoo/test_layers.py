"""Each attention module against a reference written from the papers' formulas (float64)."""

from __future__ import annotations

import pytest
import torch

from model_store.zoo.layers import Attention, attention_layers, create_attn
from model_store.zoo.layers.cbam import CBAM
from model_store.zoo.layers.eca import EfficientChannelAttention, adaptive_kernel_size
from model_store.zoo.layers.shuffle_attention import ShuffleAttention
from model_store.zoo.layers.squeeze_excite import SqueezeExcite
from model_store.zoo.registry import ATTENTION_LAYERS

from .reference_attention import cbam_reference, eca_reference, sa_reference, se_reference


def randomize(module: torch.nn.Module) -> torch.nn.Module:
    """Random parameters and BN statistics, so zero-init defaults cannot hide a bug."""
    generator = torch.Generator().manual_seed(1)
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point():
            tensor.data = torch.rand(tensor.shape, generator=generator, dtype=torch.float64) + 0.5
    return module.double().eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(
        3, 256, 7, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )


def test_se_matches_reference(x):
    m = randomize(SqueezeExcite(256, reduction=16))
    expected = se_reference(x, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias)
    torch.testing.assert_close(m(x), expected)


@pytest.mark.parametrize("kernel_size", [3, 5, 7])
def test_eca_matches_reference(x, kernel_size):
    m = randomize(EfficientChannelAttention(256, kernel_size=kernel_size))
    torch.testing.assert_close(m(x), eca_reference(x, m.conv.weight.flatten()))


def test_cbam_matches_reference(x):
    m = randomize(CBAM(256))
    bn = m.spatial.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    expected = cbam_reference(
        x,
        m.channel.fc1.weight,
        m.channel.fc1.bias,
        m.channel.fc2.weight,
        m.channel.fc2.bias,
        m.spatial.conv.weight,
        scale,
        shift,
    )
    torch.testing.assert_close(m(x), expected)


def test_sa_matches_reference(x):
    m = randomize(ShuffleAttention(256, groups=64))
    expected = sa_reference(
        x,
        64,
        m.cweight.flatten(),
        m.cbias.flatten(),
        m.sweight.flatten(),
        m.sbias.flatten(),
        m.gn.weight,
        m.gn.bias,
        m.gn.eps,
    )
    torch.testing.assert_close(m(x), expected)


@pytest.mark.parametrize(
    ("channels", "expected"), [(64, 3), (256, 5), (512, 5), (1024, 5), (2048, 7)]
)
def test_eca_adaptive_kernel_size(channels, expected):
    assert adaptive_kernel_size(channels) == expected


@pytest.mark.parametrize("name", sorted(ATTENTION_LAYERS))
def test_factory_builds_shape_preserving_modules(name, x):
    module = create_attn(name, 256).double().eval()
    assert module(x).shape == x.shape


@pytest.mark.parametrize("name", [None, "none"])
def test_factory_none_means_no_attention(name):
    assert create_attn(name, 256) is None


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("bogus", {}, "unknown attention 'bogus'"),
        ("se", {"reduction": 7}, "reduction must divide channels"),
        ("eca", {"kernel_size": 4}, "positive odd number, got 4"),
        ("sa", {"groups": 3}, "divisible by 2 \\* groups"),
    ],
)
def test_factory_rejects_bad_arguments(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_attn(name, 256, **kwargs)


@pytest.mark.parametrize(
    "name", sorted(n for n, cls in attention_layers().items() if cls.gate_from_mean)
)
def test_gate_from_mean_modules_expose_gate(name, x):
    """gate_from_mean modules must equal x * gate(mean(x)): the early squeeze relies on it."""
    module = randomize(create_attn(name, 256))
    torch.testing.assert_close(module(x), x * module.gate(x.mean((2, 3)))[:, :, None, None])


@pytest.mark.parametrize("name", sorted(ATTENTION_LAYERS))
def test_every_kind_declares_what_the_zoo_derives_from_it(name):
    """Checkpoint import recognises a kind by its marker: every kind has one, matching one of
    its own parameters and no other kind's."""
    layer = attention_layers()[name]
    assert issubclass(layer, Attention)
    own = [k for k in create_attn(name, 256).state_dict() if k.startswith(layer.checkpoint_marker)]
    assert own, f"{name}: marker {layer.checkpoint_marker!r} matches none of its parameters"
    for other in attention_layers():
        if other != name:
            names = create_attn(other, 256).state_dict()
            assert not any(k.startswith(layer.checkpoint_marker) for k in names), other
