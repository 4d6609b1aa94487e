"""Ahead-of-time compiled archives: served without compiling, refused on another machine class
(JIT fallback with a warning), no compiler needed at serve time, a warm-up that warms; and
packages that hold code only, their weights packed by the process that serves them, whatever
thread count compiled them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from model_store import create_model, optimize_for_inference
from model_store.demo.synthetic import encode, make_images
from model_store.demo.tiny import save_tiny
from model_store.worker.archive import load_archive
from model_store.worker.classifier import ImageClassifier
from model_store.worker.config import ClassifierConfig
from model_store.zoo.aot import (
    PORTABLE,
    X86_64_V3,
    AotMismatch,
    compile_packages,
    load_packages,
)
from model_store.zoo.runtimes import PACKED_AT_LOAD

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
    built["machine"]["instruction_sets"].append("avx10_2")  # a vector ISA this CPU lacks
    manifest.write_text(json.dumps(built))
    with pytest.warns(UserWarning, match="inductor models built ahead not used, compiling just"):
        fallback = ImageClassifier.load(replace(config, batch_buckets=(1,)))
    assert fallback.info["runtime"] == "jit" and fallback.compiled_graphs > 0
    assert "CPU with avx10_2, which this one lacks" in fallback.info["prebuilt_fallback"]


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


def _optimised(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return optimize_for_inference(create_model("eca_resnet50").eval(), compile=False).model


def test_packages_hold_code_and_are_loaded_with_the_weights_they_were_built_for(tmp_path):
    """ECA-ResNet-50's 98 MiB of weights: a package of a few MiB, its constants made at load
    from the model the worker loaded anyway (the archive holds the weights once). Beside other
    weights it is refused (inductor writes ECA's kernel taps into the code itself)."""
    model = _optimised(seed=1)
    manifest = compile_packages(model, (1,), 64, tmp_path, lambda _: None)
    assert manifest["weight_packing"] == PACKED_AT_LOAD
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    packages = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert weights > 90 * 2**20 and packages < 0.1 * weights
    run = load_packages(tmp_path, (1,), 64, model)[1]
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert torch.allclose(run(x.clone()), model(x), atol=1e-4)
    with pytest.raises(AotMismatch, match="other weights"):
        load_packages(tmp_path, (1,), 64, _optimised(seed=2))


WIDE_1X1 = """
import torch
from torch import nn
class Wide(nn.Module):  # layer3's 1x1 convolution: oneDNN blocks it by the thread count at batch 1
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 256, 16, stride=16)
        self.wide = nn.Conv2d(256, 1024, 1)
    def forward(self, x):
        return self.wide(self.stem(x)).relu()
"""
COMPILE = (
    WIDE_1X1
    + """
import sys
from pathlib import Path
from model_store.zoo.aot import compile_packages
torch.manual_seed(0)
model = Wide().eval().to(memory_format=torch.channels_last)
compile_packages(model, (1,), 224, Path(sys.argv[1]), print)
"""
)
SERVE = (
    WIDE_1X1
    + """
import sys
from pathlib import Path
from model_store.zoo.aot import load_packages
torch.manual_seed(0)
model = Wide().eval().to(memory_format=torch.channels_last)
run = load_packages(Path(sys.argv[1]), (1,), 224, model)[1]
x = torch.randn(1, 3, 224, 224).contiguous(memory_format=torch.channels_last)
with torch.inference_mode():
    assert torch.allclose(run(x), model(x), atol=1e-4)
    print("CALL", flush=True)
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        run(x)
    print("DONE", flush=True)
"""
)


@pytest.mark.parametrize(("built", "served"), [(1, 2), (2, 1)])
def test_a_package_compiled_with_one_thread_count_serves_another_without_reordering(
    tmp_path, built, served
):
    """oneDNN chooses a weight layout for the thread count of the process that packs (a 1x1
    convolution at batch 1: output channels in blocks of 48 on one thread, 64 on two, on
    AVX-512): packages that carried their constants, compiled with one thread count and served
    with another, reordered such weights on every call (2x slower at batch 1, ``bench.threads``).
    Packed by the serving process, they are in its layout: no reorder in a call."""

    def run(script: str, threads: int) -> str:
        env = os.environ | {"OMP_NUM_THREADS": str(threads)}
        done = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    run(COMPILE, built)
    called = run(SERVE, served).split("CALL", 1)[1].split("DONE", 1)[0]
    calls = [line for line in called.splitlines() if "primitive,exec" in line]
    assert any(",convolution," in line for line in calls)  # the verbose log was read
    assert not [line for line in calls if ",reorder," in line]


def test_a_float32_archive_runs_on_any_x86_64_v3_cpu(tiny_archives, tmp_path):
    """Its packages ask for x86-64-v3 (AVX2, FMA), not this CPU's AVX-512 or AMX: the machine
    code holds no AVX-512 instruction (no zmm or mask register), so an archive built on one of
    the CPU classes these machines alternate between serves on the other."""
    with zipfile.ZipFile(tiny_archives / "eca_resnet50.mar") as archive:
        archive.extractall(tmp_path, [n for n in archive.namelist() if n.startswith("prebuilt/")])
    manifest = json.loads((tmp_path / "prebuilt" / "manifest.json").read_text())
    assert manifest["cpu_target"] == PORTABLE
    assert manifest["machine"]["instruction_sets"] == sorted(X86_64_V3)
    for package in (tmp_path / "prebuilt").glob("batch_*.pt2"):
        with zipfile.ZipFile(package) as pt2:
            [library] = [n for n in pt2.namelist() if n.endswith(".so")]
            (tmp_path / "code.so").write_bytes(pt2.read(library))
        code = subprocess.run(
            ["objdump", "-d", str(tmp_path / "code.so")], capture_output=True, text=True, check=True
        ).stdout
        assert "ymm" in code  # AVX2 vector code, read as such
        assert not re.search(r"%zmm\d|%k[1-7]\b", code), package.name
