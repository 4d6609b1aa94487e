"""The archive cache: the same inputs built twice, anywhere, are built once and copied after;
other weights, code or plug-ins are a different archive; old entries go."""

from __future__ import annotations

import pytest
import torch

from model_store.demo.synthetic import CLASS_NAMES
from model_store.demo.tiny import save_tiny
from model_store.worker import archive_cache
from model_store.worker.archive import ArchiveSpec, _plugin_files, build_archive, fingerprint
from model_store.worker.archive_cache import CACHE_ENV
from model_store.zoo.models import create_model, tiny_arch
from model_store.zoo.runtimes import register_runtime, unregister_runtime

MODEL = "eca_resnet50"


def tiny_checkpoint(path, seed: int):
    torch.manual_seed(seed)
    model = create_model(MODEL, num_classes=len(CLASS_NAMES), **tiny_arch(MODEL))
    return save_tiny(model.eval(), path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def build(spec: ArchiveSpec, out) -> list[str]:
    said: list[str] = []
    build_archive(spec, out, progress=said.append)
    return said


def test_the_same_inputs_anywhere_are_built_once_then_copied(cache, tmp_path):
    first = ArchiveSpec(
        MODEL, checkpoint=tiny_checkpoint(tmp_path / "a" / "w.pt", 0), compile=False
    )
    assert any("built" in line for line in build(first, tmp_path / "one"))
    [entry] = cache.glob("*.mar")
    # the same weights elsewhere (another clone, another tmp folder): the same archive (a
    # checkpoint's bytes hold its file name: torch.save names its records after it)
    moved = ArchiveSpec(
        MODEL, checkpoint=tiny_checkpoint(tmp_path / "b" / "w.pt", 0), compile=False
    )
    assert fingerprint(moved) == fingerprint(first)
    said = build(moved, tmp_path / "two")
    assert any("copied from the cache" in line for line in said), said
    copied = (tmp_path / "two" / f"{MODEL}.mar").read_bytes()
    assert copied == (tmp_path / "one" / f"{MODEL}.mar").read_bytes() == entry.read_bytes()
    assert build(moved, tmp_path / "two") == [
        f"{MODEL}: up to date ({tmp_path / 'two' / MODEL}.mar)"
    ]
    # other weights are another archive, built and kept beside the first
    other = ArchiveSpec(MODEL, checkpoint=tiny_checkpoint(tmp_path / "c.pt", 1), compile=False)
    assert any("built" in line for line in build(other, tmp_path / "three"))
    assert len(list(cache.glob("*.mar"))) == 2


def test_no_cache_named_no_cache_used(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    spec = ArchiveSpec(MODEL, checkpoint=tiny_checkpoint(tmp_path / "a.pt", 0), compile=False)
    for out in ("one", "two"):
        assert any("built" in line for line in build(spec, tmp_path / out))


def test_the_least_recently_used_entries_beyond_the_limit_go(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(archive_cache, "KEEP", 2)
    archive = tmp_path / "x.mar"
    archive.write_bytes(b"archive")
    for index, name in enumerate(("old", "used", "new")):
        archive_cache.store(MODEL, name, archive)
        (cache / f"{MODEL}-{name}.mar").touch()
        if index == 1:  # "old" read again after "used" was stored: used most recently
            assert archive_cache.fetch(MODEL, "old", tmp_path / "y.mar")
    kept = sorted(p.name for p in cache.glob("*.mar"))
    assert kept == [f"{MODEL}-new.mar", f"{MODEL}-old.mar"]


def test_a_plugin_registered_from_outside_the_serving_code_is_part_of_the_fingerprint():
    register_runtime("exported", "tests.model_store.toy_runtime:ExportedGraph")
    try:
        files = _plugin_files(ArchiveSpec(MODEL, runtime="exported"))
    finally:
        unregister_runtime("exported")
    assert "toy_runtime.py" in {path.name for path in files}
