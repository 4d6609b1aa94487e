"""Runtimes: inductor's CPU path really prepacks its weights (JIT and AOT), an OpenVINO archive
serves the eager model's answers, ``auto`` builds both, measures them and keeps the faster, and
no runtime serves answers off the eager model's."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch._inductor.utils import run_and_get_code

from model_store import create_model, optimize_for_inference
from model_store.demo.synthetic import encode, make_images
from model_store.demo.tiny import save_tiny
from model_store.worker.archive import (
    ArchiveSpec,
    build_archive,
    load_archive,
    read_model_config,
    read_runtime_report,
)
from model_store.worker.archive_cache import CACHE_ENV
from model_store.worker.classifier import ImageClassifier
from model_store.worker.config import ClassifierConfig
from model_store.zoo.openvino_ir import PrecisionUnavailable, export_ir, load_ir
from model_store.zoo.precision import BF16, FP32
from model_store.zoo.runtimes import (
    MAX_LOGIT_ERROR,
    Prebuilt,
    RuntimeCheckFailed,
    fastest,
    max_logit_error,
)

from ...checks import assert_serves_without_compiling_like_eager

REPO = Path(__file__).resolve().parents[3]
PREPACKED_CONV = "_convolution_pointwise"  # oneDNN convolution on weights packed once, at load


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    images, _ = make_images(6, seed=7, size=(150, 110))
    return [encode(image, "JPEG", quality=90) for image in images]


@pytest.mark.slow
def test_jit_compiled_convolutions_use_prepacked_weights():
    """Freezing must be on while dynamo traces: with ``torch.compile(options=...)`` alone every
    convolution reordered its weights on every call (1.35x slower at batch 1)."""
    model = optimize_for_inference(create_model("eca_resnet50", layers=(1, 1, 1, 1)).eval())
    _, codes = run_and_get_code(model, torch.randn(1, 3, 64, 64))
    code = "\n".join(codes)
    assert PREPACKED_CONV in code and "extern_kernels.convolution(" not in code


@pytest.mark.slow
def test_aot_packages_use_prepacked_weights(tiny_archives, tmp_path):
    """The archive's AOTInductor code calls the packed convolution, never the plain one (the
    packages were compiled with gradients on, so freezing silently did nothing)."""
    with zipfile.ZipFile(tiny_archives / "eca_resnet50.mar") as archive:
        archive.extract("prebuilt/batch_1.pt2", tmp_path)
    with zipfile.ZipFile(tmp_path / "prebuilt" / "batch_1.pt2") as package:
        [wrapper] = [n for n in package.namelist() if n.endswith("wrapper.cpp")]
        code = package.read(wrapper).decode()
    assert PREPACKED_CONV in code
    assert not re.search(r"aoti_torch_cpu_convolution\(", code)


@pytest.mark.slow
def test_an_openvino_archive_serves_the_eager_answers_without_compiling(
    tiny_archives, tmp_path, photos
):
    archive = tiny_archives / "se_resnet50.mar"
    report = read_runtime_report(archive)
    assert report["asked"] == report["serving"] == "openvino"
    assert report["max_abs_logit_error"]["openvino"] <= MAX_LOGIT_ERROR
    config = load_archive(archive, tmp_path)
    assert config.runtime == "openvino" and (config.prebuilt_dir / "model.xml").exists()
    assert not list(config.prebuilt_dir.glob("*.pt2"))  # only what serves is in the archive
    assert_serves_without_compiling_like_eager(config, photos, "openvino", tolerance=1e-5)


@pytest.mark.slow
def test_auto_builds_both_measures_them_and_keeps_the_faster(tiny_trained, tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV)  # the build itself is under test, not a copy of it
    checkpoint = save_tiny(tiny_trained("eca_resnet50"), tmp_path / "eca.pt")
    spec = ArchiveSpec("eca_resnet50", checkpoint=checkpoint, runtime="auto", batch_buckets=(1, 2))
    messages: list[str] = []
    archive = build_archive(spec, tmp_path / "archives", progress=messages.append)
    report = read_runtime_report(archive)
    assert report["asked"] == "auto"
    assert set(report["img_per_s"]) == {"inductor", "openvino"}
    assert all(set(rates) == {"1", "2"} for rates in report["img_per_s"].values())
    assert all(v > 0 for rates in report["img_per_s"].values() for v in rates.values())
    assert report["serving"] == fastest(report["img_per_s"])
    assert all(e <= MAX_LOGIT_ERROR for e in report["max_abs_logit_error"].values())
    assert any("measuring inductor vs openvino" in m for m in messages)
    handler = read_model_config(archive)["handler"]
    assert handler["runtime"] == report["serving"]
    with zipfile.ZipFile(archive) as packed:
        prebuilt = {n.split("/")[1] for n in packed.namelist() if n.startswith("prebuilt/")}
        assert not any(n.startswith("candidates/") for n in packed.namelist())
    served_files = {"inductor": "batch_1.pt2", "openvino": "model.xml"}
    kept, dropped = (
        served_files.values()
        if report["serving"] == "inductor"
        else (reversed(served_files.values()))
    )
    assert kept in prebuilt and dropped not in prebuilt
    served = ImageClassifier.load(load_archive(archive, tmp_path / "unpacked"))
    assert served.info["runtime"] == {"inductor": "aot", "openvino": "openvino"}[report["serving"]]


def test_the_faster_runtime_is_the_one_faster_across_batch_sizes():
    """Geometric mean: the arithmetic mean would let batch 8's large numbers decide alone."""
    measured = {"a": {"1": 10.0, "8": 100.0}, "b": {"1": 20.0, "8": 60.0}}
    assert fastest(measured) == "b"
    assert fastest({"a": {"1": 10.0}}) == "a"


def test_a_runtime_off_the_eager_answers_is_refused():
    model = create_model("eca_resnet50", layers=(1, 1, 1, 1), num_classes=4).eval()

    def off_by(delta: float) -> Prebuilt:
        return Prebuilt("test", {1: lambda x: model(x) + delta, 2: lambda x: model(x)})

    assert max_logit_error(off_by(0.0), model, 64) == 0.0
    assert max_logit_error(off_by(MAX_LOGIT_ERROR / 2), model, 64) <= MAX_LOGIT_ERROR
    for delta in (2 * MAX_LOGIT_ERROR, float("nan")):
        with pytest.raises(RuntimeCheckFailed, match="max abs logit error"):
            max_logit_error(off_by(delta), model, 64)


def test_runtime_settings_are_validated(tmp_path):
    with pytest.raises(ValueError, match="runtime must be one of"):
        ArchiveSpec("eca_resnet50", runtime="tensorrt")
    for contradiction in ({"compile": False}, {"aot": False}):
        with pytest.raises(ValueError, match="needs compile and aot"):
            ArchiveSpec("eca_resnet50", runtime="openvino", **contradiction)
    with pytest.raises(ValueError, match="needs compile and aot"):
        ArchiveSpec("eca_resnet50", runtime="auto", aot=False)
    assert ArchiveSpec("eca_resnet50", aot=False).model_config()["handler"]["runtime"] == (
        "inductor"
    )
    with pytest.raises(ValueError, match="needs prebuilt_dir"):
        ClassifierConfig("eca_resnet50", tmp_path / "w.pt", runtime="openvino")
    with pytest.raises(ValueError, match="runtime must be one of"):
        ClassifierConfig("eca_resnet50", tmp_path / "w.pt", runtime="auto")


@pytest.mark.slow
def test_a_worker_without_openvino_says_so_and_compiles_just_in_time(tiny_archives, tmp_path):
    script = (
        "import sys; sys.modules['openvino'] = None  # as if not installed\n"
        "import warnings; from dataclasses import replace; from pathlib import Path\n"
        "from model_store.worker.archive import load_archive\n"
        "from model_store.worker.classifier import ImageClassifier\n"
        "config = replace(load_archive(Path(sys.argv[1]), Path(sys.argv[2])), batch_buckets=(1,))\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    c = ImageClassifier.load(config)\n"
        "print(c.info['runtime']); print(c.info['prebuilt_fallback'])\n"
        "print([str(w.message) for w in caught if 'not used' in str(w.message)])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tiny_archives / "se_resnet50.mar"), str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runtime, reason, warned = done.stdout.splitlines()[-3:]
    assert runtime == "jit"
    assert "pip install 'attention-serving[openvino]'" in reason
    assert "openvino models built ahead not used, compiling just in time" in warned


def _conv_ir(directory: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval()
    export_ir(model, 32, directory)


def test_an_openvino_bf16_archive_loads_only_where_this_cpu_computes_bf16(tmp_path):
    """OpenVINO's CPU plugin quietly runs a bf16 hint in f32 on a CPU without bf16 instructions
    (AVX2 only): the compiled model says which it took, and a bf16 archive that would compute
    f32 refuses to load (the worker then serves fp32 just in time, and says fp32)."""
    import openvino

    _conv_ir(tmp_path)
    capabilities = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" in capabilities:
        [run] = load_ir(tmp_path, (1,), 32, BF16).values()
        assert run(torch.zeros(1, 3, 32, 32)).shape == (1, 8, 30, 30)
    else:
        with pytest.raises(PrecisionUnavailable, match="in f32"):
            load_ir(tmp_path, (1,), 32, BF16)
    assert load_ir(tmp_path, (1,), 32, FP32)  # float32 runs everywhere


def test_a_precision_the_plugin_did_not_take_is_refused(tmp_path, monkeypatch):
    """The refusal above, on a CPU that has bf16: the compiled model reports f32."""
    import openvino

    _conv_ir(tmp_path)
    compile_model = openvino.Core.compile_model

    def compiled_in_f32(core, model, device, properties):
        compiled = compile_model(
            core, model, device, properties | {"INFERENCE_PRECISION_HINT": "f32"}
        )
        return compiled

    monkeypatch.setattr(openvino.Core, "compile_model", compiled_in_f32)
    with pytest.raises(PrecisionUnavailable, match="runs the bf16 IR in f32"):
        load_ir(tmp_path, (1,), 32, BF16)
