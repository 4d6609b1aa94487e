"""A runtime added as ``model_store.zoo.runtimes`` says (one module implementing ``Runtime``,
one registry line) is built into an archive, checked against the eager model, and serves
through the gateway, with no other edit."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_store.demo.tiny import save_tiny
from model_store.worker.archive import ArchiveSpec, build_archive, read_runtime_report
from model_store.zoo.runtimes import (
    MAX_LOGIT_ERROR,
    RUNTIMES,
    register_runtime,
    unregister_runtime,
)

from ..servers import serve_in_process

NAME = "exported"
MODEL = "eca_resnet50"


@pytest.fixture(scope="module")
def exported() -> str:
    """The registry line, as a plug-in would add it; removed afterwards."""
    register_runtime(NAME, "tests.model_store.toy_runtime:ExportedGraph")
    yield NAME
    unregister_runtime(NAME)
    assert NAME not in RUNTIMES


def test_an_archive_asks_only_for_what_the_runtime_builds(exported):
    with pytest.raises(ValueError, match="does not build int8"):
        ArchiveSpec(MODEL, runtime=exported, precision="int8")
    assert ArchiveSpec(MODEL, runtime=exported, precision="auto").candidates == [(NAME, "fp32")]


@pytest.mark.slow
def test_it_is_built_checked_and_served_through_the_gateway(exported, tiny_trained, tmp_path: Path):
    """Built ahead and checked against the eager model like the built-in runtimes, then served
    by the gateway (in-process backend: the worker's own classifier, in the process where the
    runtime is registered) with the right labels, reported as what it is."""
    checkpoint = save_tiny(tiny_trained(MODEL), tmp_path / "eca.pt")
    spec = ArchiveSpec(MODEL, checkpoint=checkpoint, runtime=exported, batch_buckets=(1, 2))
    archive = build_archive(spec, tmp_path / "archives", progress=lambda _: None)
    report = read_runtime_report(archive)
    assert report["serving"] == NAME and report["max_abs_logit_error"][NAME] <= MAX_LOGIT_ERROR
    served = serve_in_process(MODEL, tmp_path / "archives", batch_size=2)
    assert served["runtime"] == "exported" and served["precision"] == "fp32"
