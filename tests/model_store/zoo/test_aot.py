"""Ahead-of-time compiled archives: served without compiling, refused on another machine class
(JIT fallback with a warning), no compiler needed at serve time; and a warm-up that warms."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from model_store.demo.synthetic import encode, make_images
from model_store.demo.tiny import save_tiny
from model_store.worker.archive import load_archive
from model_store.worker.classifier import ImageClassifier
from model_store.worker.config import ClassifierConfig

from ...checks import assert_serves_without_compiling_like_eager

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    images, _ = make_images(5, seed=99, size=(160, 120))
    return [encode(image, "JPEG", quality=90) for image in images]


def graphs_compiled() -> int:
    return counters["stats"]["unique_graphs"]


def test_an_archive_compiled_ahead_serves_without_compiling(tiny_archives, tmp_path, photos):
    config = load_archive(tiny_archives / "eca_resnet50.mar", tmp_path)
    assert_serves_without_compiling_like_eager(config, photos, "aot", tolerance=1e-4)


def test_packages_built_for_another_machine_class_fall_back_to_jit(tiny_archives, tmp_path):
    config = load_archive(tiny_archives / "eca_resnet50.mar", tmp_path)
    manifest = config.prebuilt_dir / "manifest.json"
    built = json.loads(manifest.read_text())
    built["machine"]["cpu_capability"] = "a vector ISA this machine lacks"
    manifest.write_text(json.dumps(built))
    with pytest.warns(UserWarning, match="inductor models built ahead not used, compiling just"):
        fallback = ImageClassifier.load(replace(config, batch_buckets=(1,)))
    assert fallback.info["runtime"] == "jit" and fallback.compiled_graphs > 0
    assert "a vector ISA this machine lacks" in fallback.info["prebuilt_fallback"]


def test_serving_an_aot_archive_needs_no_compiler(tiny_archives, tmp_path, photos):
    """The worker's PATH holds no compiler and CC/CXX point nowhere: inductor could not build
    anything, yet the archive loads and classifies with its packages."""
    (tmp_path / "photo.jpg").write_bytes(photos[0])
    script = (
        "import sys; from pathlib import Path\n"
        "from model_store.worker.archive import load_archive\n"
        "from model_store.worker.classifier import ImageClassifier\n"
        "c = ImageClassifier.load(load_archive(Path(sys.argv[1]), Path(sys.argv[2])))\n"
        "[r] = c.classify([Path(sys.argv[3]).read_bytes()])\n"
        "print(c.info['runtime'], r['predictions'][0]['label'])\n"
    )
    env = {
        "PATH": str(Path(sys.executable).parent),
        "CC": "/nonexistent/cc",
        "CXX": "/nonexistent/c++",
        "HOME": str(tmp_path),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "no-cache"),
    }
    done = subprocess.run(
        [sys.executable, "-c", script, str(tiny_archives / "eca_resnet50.mar"),
         str(tmp_path / "unpacked"), str(tmp_path / "photo.jpg")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[0] == "aot"


def test_the_warm_up_warms_what_requests_use(tiny_trained, tmp_path, photos):
    """JIT path: after load, real requests of every bucket compile nothing more. (The old
    warm-up fed tensors made outside inference mode, so the first real call of every bucket
    compiled again: seconds per bucket, the first-request and p99 tails.)"""
    weights = save_tiny(tiny_trained("eca_resnet50"), tmp_path / "eca.pt")
    served = ImageClassifier.load(ClassifierConfig("eca_resnet50", weights, batch_buckets=(1, 2)))
    assert served.info["runtime"] == "jit"
    before = graphs_compiled()
    for count in (1, 2, 3):  # 3 = a padded 2 plus a 1
        assert all("predictions" in r for r in served.classify(photos[:count]))
    assert graphs_compiled() == before
    assert torch.is_inference_mode_enabled() is False  # the classifier leaves no mode behind
