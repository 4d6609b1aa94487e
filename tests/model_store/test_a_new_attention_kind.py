"""A kind added as ``model_store.zoo.registry`` says (one file, one registry line) builds,
loads its own checkpoint and a published layout, optimises and serves, with no other edit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from model_store import CheckpointError, count_parameters, create_model, tiny_arch
from model_store.demo.synthetic import CLASS_NAMES
from model_store.demo.tiny import save_tiny, train_tiny
from model_store.worker.archive import ArchiveSpec, build_archive
from model_store.zoo.checkpoint import read_checkpoint, save_checkpoint
from model_store.zoo.optimize import enable_inner_squeeze, fold_batchnorm, optimize_for_inference
from model_store.zoo.registry import MODELS, register_attention, unregister_attention

from ..servers import serve_in_process
from .toy_attention import ToyGate

KIND = "toy"


@pytest.fixture(scope="module")
def toy() -> str:
    """The registry line, as a plug-in would add it; removed afterwards."""
    name = register_attention(KIND, "tests.model_store.toy_attention:ToyGate").name
    yield name
    unregister_attention(KIND)
    assert name not in MODELS


def random_toy(name: str) -> torch.nn.Module:
    model = create_model(name, num_classes=len(CLASS_NAMES), **tiny_arch(name)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def test_it_builds_with_the_attention_in_every_block(toy):
    model = create_model(toy, **tiny_arch(toy))
    assert toy == "toy_resnet50" and MODELS[toy].attention == KIND
    assert all(isinstance(block.attn, ToyGate) for block in model.blocks())
    _, attention = count_parameters(model)
    assert attention == sum(2 * block.attn.scale.numel() for block in model.blocks())


def test_it_loads_its_own_checkpoint_and_a_published_layout(toy, tmp_path: Path):
    source = random_toy(toy)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = source(x)
    own = save_checkpoint(source, tmp_path / "own.pt")
    published = tmp_path / "published.pth"
    renamed = {
        "module."
        + re.sub(r"\.attn\.scale$", ".toy_gate.a", re.sub(r"\.attn\.shift$", ".toy_gate.b", k)): v
        for k, v in source.state_dict().items()
    }
    torch.save({"state_dict": renamed}, published)
    for path in (own, published):
        loaded = create_model(toy, checkpoint=path).eval()  # shapes from the file
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="holds 'toy' attention"):
        create_model("eca_resnet50", checkpoint=read_checkpoint(published))


def test_it_optimises_like_the_built_in_kinds(toy):
    model = random_toy(toy)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    optimised = optimize_for_inference(model, compile=True)
    torch.testing.assert_close(optimised(x), expected, rtol=1e-4, atol=1e-4)
    assert optimised.compiled, optimised.compile_error
    folded = fold_batchnorm(random_toy(toy))
    assert enable_inner_squeeze(folded) == len(list(folded.blocks()))  # it gates from the mean


@pytest.mark.slow
def test_it_serves_through_the_gateway(toy, tmp_path: Path):
    """Trained on the synthetic shapes, compiled ahead into an archive, served by the gateway
    (in-process backend: the worker's own classifier, in the process where the kind is
    registered) with the right labels."""
    checkpoint = save_tiny(train_tiny(toy), tmp_path / "toy.pt")
    spec = ArchiveSpec(toy, checkpoint=checkpoint, batch_buckets=(1, 2))
    build_archive(spec, tmp_path / "archives", progress=lambda _: None)
    served = serve_in_process(toy, tmp_path / "archives", batch_size=2)
    assert served["attention"] == KIND and served["runtime"] == "aot"
