"""Checkpoints in each published layout load as saved, with the same logits; bad ones are refused.

Each foreign layout is produced here by renaming our state_dict the way that project names
its modules (written independently of ``model_store.zoo.checkpoint``'s rules).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from model_store import CheckpointError, create_model, save_checkpoint, tiny_arch
from model_store.zoo.resnet import ResNet

from .test_models import ECA_K3557

StateDict = dict[str, torch.Tensor]


def randomized(name: str, **kwargs) -> ResNet:
    """A tiny model with random BN statistics too, so every tensor affects the logits."""
    model = create_model(name, num_classes=10, **(tiny_arch(name) | kwargs))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def renamed(
    sd: StateDict, rules: list[tuple[str, str]], conv_weights: str | None = None
) -> StateDict:
    out = {}
    for key, value in sd.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        if conv_weights and re.search(conv_weights, key) and value.dim() == 2:
            value = value[:, :, None, None]  # linear weight stored as a 1x1 conv
        out[key] = value
    return out


def official_eca(sd: StateDict) -> dict:
    """BangguWu/ECANet: ``eca.conv``, saved from DataParallel inside a training checkpoint."""
    sd = renamed(sd, [(r"\.attn\.", ".eca.")])
    return {
        "epoch": 100,
        "best_prec1": 77.4,
        "state_dict": {f"module.{k}": v for k, v in sd.items()},
    }


def timm_eca(sd: StateDict) -> StateDict:
    """timm resnet with ``attn_layer='eca'``: the module is called ``se``."""
    return renamed(sd, [(r"\.attn\.", ".se.")])


def timm_seresnet(sd: StateDict) -> dict:
    """timm seresnet50: ``se.fc1``/``se.fc2`` are 1x1 convs with bias; wrapped as ``model``."""
    return {"model": renamed(sd, [(r"\.attn\.", ".se.")], conv_weights=r"\.se\.fc[12]\.weight$")}


def sequential_se(sd: StateDict) -> StateDict:
    """``SELayer`` re-implementations: ``se.fc = Sequential(Linear, ReLU, Linear, Sigmoid)``."""
    return renamed(sd, [(r"\.attn\.fc1\.", ".se.fc.0."), (r"\.attn\.fc2\.", ".se.fc.2.")])


def official_cbam(sd: StateDict) -> StateDict:
    """Jongchan/attention-module: ``cbam.ChannelGate.mlp.{1,3}``,
    ``cbam.SpatialGate.spatial.{conv,bn}``, saved from DataParallel."""
    rules = [
        (r"\.attn\.channel\.fc1\.", ".cbam.ChannelGate.mlp.1."),
        (r"\.attn\.channel\.fc2\.", ".cbam.ChannelGate.mlp.3."),
        (r"\.attn\.spatial\.", ".cbam.SpatialGate.spatial."),
    ]
    return {f"module.{k}": v for k, v in renamed(sd, rules).items()}


def official_sa(sd: StateDict) -> dict:
    """wofmanaf/SA-Net: ``sa.cweight`` etc., DataParallel, under ``state_dict``."""
    return {
        "state_dict": {f"module.{k}": v for k, v in renamed(sd, [(r"\.attn\.", ".sa.")]).items()}
    }


def official_eca_mobilenet(sd: StateDict) -> dict:
    """BangguWu/ECANet's ECA-MobileNetV2: the 1-D conv is the last module of ``features.N.conv``
    (index 3 after a block without expansion, else 4), saved from DataParallel."""
    last = {n: 3 if n == 1 else 4 for n in range(1, 18)}
    rules = [(rf"^features\.{n}\.attn\.", f"features.{n}.conv.{k}.") for n, k in last.items()]
    return {"state_dict": {f"module.{k}": v for k, v in renamed(sd, rules).items()}}


LAYOUTS: list[tuple[str, str, dict, Callable[[StateDict], object]]] = [
    ("torchvision resnet50", "resnet50", {}, lambda sd: sd),
    ("official ECANet k=3,5,5,7", "eca_resnet50", {"stage_attn_kwargs": ECA_K3557}, official_eca),
    ("timm resnet + eca, adaptive k", "eca_resnet50", {}, timm_eca),
    ("timm seresnet50", "se_resnet50", {}, timm_seresnet),
    ("Sequential fc.0/fc.2 SE", "se_resnet50", {}, sequential_se),
    ("Sequential SE without bias", "se_resnet50", {"bias": False}, sequential_se),
    ("official CBAM", "cbam_resnet50", {}, official_cbam),
    ("official SA-Net", "sa_resnet50", {}, official_sa),
    ("torchvision mobilenet_v2", "mobilenet_v2", {}, lambda sd: sd),
    ("official ECA-MobileNetV2", "eca_mobilenet_v2", {}, official_eca_mobilenet),
]


@pytest.mark.parametrize(
    ("layout", "name", "kwargs", "convert"), LAYOUTS, ids=[layout[0] for layout in LAYOUTS]
)
def test_published_layouts_load_as_saved(tmp_path: Path, layout, name, kwargs, convert):
    source = randomized(name, **kwargs)
    path = tmp_path / "checkpoint.pth"
    torch.save(convert(source.state_dict()), path)

    loaded = create_model(name, checkpoint=path).eval()  # no shape arguments: read from the file

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)
    assert loaded.arch["num_classes"] == 10
    assert {k: loaded.arch[k] for k in tiny_arch(name)} == tiny_arch(name)


def test_eca_kernel_sizes_come_from_checkpoint(tmp_path: Path):
    path = tmp_path / "eca.pth"
    torch.save(
        official_eca(randomized("eca_resnet50", stage_attn_kwargs=ECA_K3557).state_dict()), path
    )
    model = create_model("eca_resnet50", checkpoint=path)
    assert [block.attn.kernel_size for block in model.blocks()] == [3, 5, 5, 7]


def test_own_format_round_trip_keeps_metadata(tmp_path: Path):
    source = randomized("sa_resnet50")
    path = save_checkpoint(
        source, tmp_path / "own.pt", labels=[f"c{i}" for i in range(10)], input_size=64
    )
    loaded = create_model("sa_resnet50", checkpoint=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)
    from model_store import read_checkpoint

    meta = read_checkpoint(path).meta
    assert (
        meta["labels"][3] == "c3"
        and meta["input_size"] == 64
        and meta["arch"]["name"] == "sa_resnet50"
    )


def save(tmp_path: Path, obj: object) -> Path:
    path = tmp_path / "bad.pth"
    torch.save(obj, path)
    return path


def test_partial_checkpoint_names_missing_keys(tmp_path: Path):
    sd = randomized("se_resnet50").state_dict()
    del sd["layer2.0.attn.fc1.bias"], sd["fc.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys \(2\): .*layer2\.0\.attn\.fc1\.bias"):
        create_model("se_resnet50", num_classes=10, checkpoint=save(tmp_path, sd))


def test_extra_keys_are_named(tmp_path: Path):
    sd = randomized("resnet50").state_dict() | {"layer1.0.extra.weight": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): layer1\.0\.extra\.weight"):
        create_model("resnet50", checkpoint=save(tmp_path, sd))


def test_shape_mismatch_is_named(tmp_path: Path):
    path = save(tmp_path, randomized("resnet50").state_dict())
    with pytest.raises(
        CheckpointError, match=r"fc\.weight \(checkpoint \(10, 1024\), model \(1000, 1024\)\)"
    ):
        create_model("resnet50", num_classes=1000, checkpoint=path)


def test_wrong_attention_kind_is_refused(tmp_path: Path):
    path = save(tmp_path, timm_seresnet(randomized("se_resnet50").state_dict()))
    with pytest.raises(
        CheckpointError, match="holds 'se' attention but model 'eca_resnet50' expects 'eca'"
    ):
        create_model("eca_resnet50", checkpoint=path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"epoch": 3, "optimizer": {"lr": 0.1}}, "no state_dict found"),
        ([1, 2, 3], "expected a state_dict"),
    ],
)
def test_unreadable_structures_are_refused(tmp_path: Path, content, message):
    with pytest.raises(CheckpointError, match=message):
        create_model("resnet50", checkpoint=save(tmp_path, content))


def test_garbage_and_missing_files_are_refused(tmp_path: Path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        create_model("resnet50", checkpoint=garbage)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        create_model("resnet50", checkpoint=tmp_path / "absent.pth")
