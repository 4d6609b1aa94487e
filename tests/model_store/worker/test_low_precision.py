"""bf16 and int8 archives of the tiny trained models, on both runtimes: each is built only when it
passes the fidelity gate against the float32 eager model on held-out images, records the numbers
and its calibration source, loads with the precision it was built in, and classifies the
synthetic shapes as float32 does; a gate it misses refuses the build, naming the numbers. The
gate's measures and the calibration folder are checked on their own. Runs on any x86-64 CPU (bf16
and int8 run slower without AMX, not wrong)."""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from model_store.demo.synthetic import CLASS_NAMES, encode, make_images
from model_store.demo.tiny import save_tiny
from model_store.worker.archive import (
    ArchiveSpec,
    build_archive,
    load_archive,
    read_model_config,
    read_runtime_report,
)
from model_store.worker.calibration import HELD_OUT_EVERY, calibration_set
from model_store.worker.classifier import ImageClassifier
from model_store.zoo.aot import AotRunner
from model_store.zoo.fidelity import FidelityFailed, FidelityGate, measure
from model_store.zoo.openvino_ir import OpenVinoRunner
from model_store.zoo.runtimes import PACKED_AT_LOAD
from service.settings import GatewaySettings

from ...servers import GatewayThread
from ...service.test_gateway_torchserve import metric

REPO = Path(__file__).resolve().parents[3]
BUCKETS = (1, 4)


@pytest.fixture(scope="module")
def held_out() -> tuple[list[bytes], list[int]]:
    images, labels = make_images(24, seed=99, size=(160, 120))
    return [encode(image, "JPEG", quality=90) for image in images], labels


@pytest.fixture(scope="module")
def checkpoint(tiny_trained, tmp_path_factory) -> Path:
    return save_tiny(tiny_trained("eca_resnet50"), tmp_path_factory.mktemp("ckpt") / "eca.pt")


def accuracy(classifier: ImageClassifier, images: list[bytes], labels: list[int]) -> float:
    results = classifier.classify(images, top_k=1)
    best = [r["predictions"][0]["label"] for r in results]
    return sum(b == CLASS_NAMES[label] for b, label in zip(best, labels, strict=True)) / len(labels)


EXECUTED_AS = {
    "bf16": {"bf16", "torch.bfloat16"},
    "int8": {"i8", "u8", "torch.int8", "torch.uint8"},
}
"""What a runtime calls the precision it computes in: OpenVINO's per-operation runtime precision,
or the dtype of the constants an AOTInductor package runs on."""


def executed_precisions(runner: object) -> set[str]:
    """The precisions a loaded runner really computes in, asked of its runtime: the execution
    graph OpenVINO compiled (each operation's ``runtimePrecision``), or the dtypes of the
    constants (packed weights) an AOTInductor package holds."""
    if isinstance(runner, OpenVinoRunner):
        graph = runner.compiled.get_runtime_model()
        return {op.get_rt_info()["runtimePrecision"].astype(str) for op in graph.get_ops()}
    assert isinstance(runner, AotRunner), runner
    constants = runner.constants or runner.package.loader.get_constants_map(False)
    return {str(tensor.dtype) for tensor in constants.values()}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("runtime", "precision", "served"),
    [
        ("inductor", "bf16", "aot"),
        ("inductor", "int8", "aot"),
        ("openvino", "bf16", "openvino"),
        ("openvino", "int8", "openvino"),
    ],
)
def test_a_low_precision_archive_passes_its_gate_and_serves_in_that_precision(
    checkpoint, held_out, tmp_path, runtime, precision, served
):
    spec = ArchiveSpec(
        "eca_resnet50",
        checkpoint=checkpoint,
        runtime=runtime,
        precision=precision,
        batch_buckets=BUCKETS,
    )
    archive = build_archive(spec, tmp_path / "archives", progress=lambda _: None)
    report = read_runtime_report(archive)
    assert (report["serving"], report["precision"]) == (runtime, precision)
    measured = report["fidelity"][f"{runtime}-{precision}"]
    assert FidelityGate().failures(measured) == []
    assert measured["images"] == 64 and measured["top1_agreement"] >= 0.99
    assert report["calibration"]["real_data"] is False
    assert "synthetic shapes" in report["calibration"]["source"]
    assert read_model_config(archive)["handler"]["precision"] == precision

    config = load_archive(archive, tmp_path / "unpacked")
    torch.compile(torch.nn.Linear(2, 2))(torch.ones(1, 2))  # a graph of the process, not its
    classifier = ImageClassifier.load(config)
    assert (classifier.info["runtime"], classifier.info["precision"]) == (served, precision)
    # not the archive's word for it: what the runtime itself compiled and holds
    for runner in classifier.runner.prebuilt.runners.values():
        assert executed_precisions(runner) & EXECUTED_AS[precision], executed_precisions(runner)
    images, labels = held_out
    assert accuracy(classifier, images, labels) >= 0.9  # float32 scores 1.0 on these
    assert classifier.compiled_graphs == 0  # prebuilt: nothing compiled at load


@pytest.mark.slow
def test_auto_precision_measures_every_precision_that_passes_and_keeps_the_fastest(
    checkpoint, tmp_path
):
    spec = ArchiveSpec(
        "eca_resnet50", checkpoint=checkpoint, runtime="openvino", precision="auto",
        batch_buckets=BUCKETS,
    )  # fmt: skip
    archive = build_archive(spec, tmp_path, progress=lambda _: None)
    report = read_runtime_report(archive)
    candidates = {"openvino", "openvino-bf16", "openvino-int8"}
    assert set(report["fidelity"]) == set(report["img_per_s"]) == candidates
    assert report["asked_precision"] == "auto" and report["rejected"] == {}
    fastest = max(
        report["img_per_s"],
        key=lambda name: statistics.geometric_mean(report["img_per_s"][name].values()),
    )
    precision = fastest.partition("-")[2] or "fp32"
    assert report["precision"] == precision == read_model_config(archive)["handler"]["precision"]


@pytest.mark.slow
def test_a_gate_the_archive_misses_refuses_the_build_naming_the_numbers(checkpoint, tmp_path):
    impossible = FidelityGate(min_top1_agreement=1.0, max_probability_shift=0.0)
    spec = ArchiveSpec(
        "eca_resnet50",
        checkpoint=checkpoint,
        runtime="openvino",
        precision="int8",
        batch_buckets=BUCKETS,
        fidelity=impossible,
    )
    with pytest.raises(FidelityFailed) as refused:
        build_archive(spec, tmp_path, progress=lambda _: None)
    assert "max probability shift" in str(refused.value) and "> 0.0" in str(refused.value)
    assert not (tmp_path / "eca_resnet50.mar").exists()


@pytest.mark.slow
def test_the_build_command_refuses_it_too_and_says_why(checkpoint, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "model_store", "build", "--models", "eca_resnet50",
         "--checkpoint", str(checkpoint), "--runtime", "openvino", "--precision", "int8",
         "--batch-buckets", "1,4", "--max-probability-shift", "0", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode != 0
    assert "error: eca_resnet50: openvino-int8 misses the fidelity gate" in done.stderr
    assert "Traceback" not in done.stderr


def test_low_precision_needs_a_model_built_ahead():
    with pytest.raises(ValueError, match="bf16 models are built with the archive"):
        ArchiveSpec("eca_resnet50", precision="bf16", aot=False)
    with pytest.raises(ValueError, match="precision must be one of"):
        ArchiveSpec("eca_resnet50", precision="fp16")


def test_the_gate_measures_agreement_overlap_and_shifts():
    reference = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0], [0.0, 5.0, 1.0, 2.0, 3.0, 4.0]])
    same = measure(reference, reference)
    assert same["top1_agreement"] == same["top5_overlap"] == 1.0
    assert same["max_probability_shift"] == same["max_abs_logit_error"] == 0.0
    swapped = reference.clone()
    swapped[1, [1, 5]] = swapped[1, [5, 1]]  # second image: top-1 changes, top-5 set does not
    moved = measure(swapped, reference)
    assert moved["top1_agreement"] == 0.5 and moved["top5_overlap"] == 1.0
    assert moved["max_abs_logit_error"] == 1.0 and moved["max_probability_shift"] > 0.1
    assert FidelityGate().failures(moved) == [
        "top-1 agreement 0.5000 < 0.99",
        f"max probability shift {moved['max_probability_shift']:.4f} > 0.02",
    ]
    with pytest.raises(ValueError, match="must be in"):
        FidelityGate(max_probability_shift=2.0)


def test_calibration_images_come_from_a_folder_with_every_fourth_held_out(tmp_path):
    images, _ = make_images(40, seed=3, size=(90, 70))
    for index, image in enumerate(images):
        (tmp_path / f"{index:03d}.jpg").write_bytes(encode(image, "JPEG"))
    (tmp_path / "notes.txt").write_text("not an image: skipped")
    found = calibration_set(tmp_path, input_size=64)
    assert found.real and str(tmp_path) in found.source
    assert (len(found.calibration), len(found.held_out)) == (30, 40 // HELD_OUT_EVERY)
    assert found.held_out.shape[1:] == (3, 64, 64)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=r"broken\.png"):
        calibration_set(tmp_path, input_size=64)


def test_too_few_calibration_images_are_refused(tmp_path):
    for index, image in enumerate(make_images(12, seed=4)[0]):
        (tmp_path / f"{index}.png").write_bytes(encode(image, "PNG"))
    with pytest.raises(ValueError, match="need at least 32"):
        calibration_set(tmp_path, input_size=64)


@pytest.mark.slow
def test_the_gateway_reports_the_precision_its_worker_serves(checkpoint, tmp_path):
    """An openvino bf16 archive behind the gateway (in-process backend): ``/v1/models``, the
    Open Inference Protocol's model metadata and ``gateway_model_runtime`` all say bf16."""
    spec = ArchiveSpec(
        "eca_resnet50", checkpoint=checkpoint, runtime="openvino", precision="bf16",
        batch_buckets=BUCKETS,
    )  # fmt: skip
    build_archive(spec, tmp_path / "archives", progress=lambda _: None)
    settings = GatewaySettings(
        backend="inprocess",
        models=["eca_resnet50"],
        archive_dir=tmp_path / "archives",
        max_batch_size=BUCKETS[-1],
    )
    with GatewayThread(settings) as gateway:
        [listed] = httpx.get(f"{gateway.url}/v1/models", timeout=60).json()["models"]
        metadata = httpx.get(f"{gateway.url}/v2/models/eca_resnet50", timeout=60).json()
        labels = {
            "model": "eca_resnet50",
            "runtime": "openvino",
            "precision": "bf16",
            "weight_packing": PACKED_AT_LOAD,
        }  # OpenVINO compiles at load
        exported = metric(gateway.url, "gateway_model_runtime", **labels)
    assert (listed["runtime"], listed["precision"]) == ("openvino", "bf16")
    assert metadata["platform"] == "pytorch_openvino_bf16"
    assert metadata["parameters"] == {"runtime": "openvino", "precision": "bf16"}
    assert exported == 1
