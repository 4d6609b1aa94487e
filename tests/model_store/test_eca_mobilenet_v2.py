"""ECA-MobileNetV2, the backbone added as ``model_store.zoo.registry`` says (one file, one line in
``BACKBONES``): trained, compiled ahead into an archive and served through the gateway, named
and counted as what it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_store.demo.tiny import save_tiny
from model_store.worker.archive import ArchiveSpec, build_archive
from model_store.zoo.models import count_parameters
from model_store.zoo.registry import MODELS

from ..servers import serve_in_process

MODEL = "eca_mobilenet_v2"


def test_the_backbone_gives_its_served_names():
    assert MODELS[MODEL].backbone == "mobilenet_v2" and MODELS[MODEL].attention == "eca"
    assert MODELS["mobilenet_v2"].attention == "none"
    assert MODELS[MODEL].architecture == "MobileNetV2"


@pytest.mark.slow
def test_it_serves_through_the_gateway(tiny_trained, tmp_path: Path):
    model = tiny_trained(MODEL)
    checkpoint = save_tiny(model, tmp_path / "eca_mobilenet_v2.pt")
    spec = ArchiveSpec(MODEL, checkpoint=checkpoint, batch_buckets=(1, 2))
    build_archive(spec, tmp_path / "archives", progress=lambda _: None)
    served = serve_in_process(MODEL, tmp_path / "archives", batch_size=2)
    total, attention = count_parameters(model)
    assert served["architecture"] == "MobileNetV2" and served["attention"] == "eca"
    assert (served["parameters"], served["attention_parameters"]) == (total, attention)
    assert served["runtime"] == "aot"
