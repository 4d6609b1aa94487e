"""An archive's settings are refused when the archive is built, with the worker's own checks,
not later inside TorchServe (where a bad one builds fine and every worker dies at load)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from model_store.__main__ import main
from model_store.demo.tiny import save_tiny
from model_store.worker.archive import ArchiveSpec, build_archive, load_archive
from model_store.worker.classifier import ImageClassifier

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"compile_mode": "fast"}, "unknown compile mode 'fast'"),
        ({"batch_buckets": (4, 2)}, "batch_buckets must be increasing"),
        ({"batch_buckets": ()}, "batch_buckets must be increasing"),
        ({"workers": 0}, "workers must be at least 1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"max_batch_delay_ms": -1}, "max_batch_delay_ms must be >= 0"),
        ({"runtime": "tensorrt"}, "runtime must be one of"),
        ({"runtime": "openvino", "aot": False}, "needs compile and aot"),
        ({"extra": {"top_k": 50}}, "top_k must be in 1..20"),
        ({"extra": {"max_pixels": 10, "max_batch_pixels": 5}}, "max_batch_pixels"),
        ({"extra": {"colour": "blue"}}, "unknown classifier settings \\['colour'\\]"),
    ],
)
def test_bad_settings_are_refused_when_the_archive_is_specified(settings, message):
    with pytest.raises(ValueError, match=message):
        ArchiveSpec("eca_resnet50", **settings)


def test_unknown_models_are_refused():
    with pytest.raises(ValueError, match="unknown model 'eca_resnet18'"):
        ArchiveSpec("eca_resnet18")


def test_the_build_command_says_what_is_wrong_before_building(tmp_path):
    with pytest.raises(SystemExit, match="error: eca_resnet50: workers must be at least 1"):
        main(["build", "--models", "eca_resnet50", "--workers", "0", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_the_build_command_builds_several_archives_at_once(tiny_trained, tmp_path):
    """``--jobs 2`` spawns a process per archive from ``python -m model_store`` (whose
    ``__main__`` a spawned process cannot import), as the worker image's build does."""
    models = ("eca_resnet50", "se_resnet50")
    args = []
    for model in models:
        args += ["--checkpoint", f"{model}={save_tiny(tiny_trained(model), tmp_path / model)}"]
    done = subprocess.run(
        [sys.executable, "-m", "model_store", "build", "--models", ",".join(models),
         "--no-compile", "--jobs", "2", "--out", str(tmp_path / "out"), *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.mar")) == [f"{m}.mar" for m in models]
    assert "[1/2]" in done.stdout and "[2/2]" in done.stdout


def test_an_archive_built_without_weights_says_it_is_untrained(tmp_path):
    """What README promises a user who forgot ``--checkpoint``: the worker's description says
    its answers mean nothing."""
    spec = ArchiveSpec("mobilenet_v2", compile=False, batch_buckets=(1,))
    archive = build_archive(spec, tmp_path / "archives", progress=lambda _: None)
    classifier = ImageClassifier.load(load_archive(archive, tmp_path / "unpacked"))
    assert classifier.info["weights"] == "UNTRAINED: seeded random init (seed 0)"
