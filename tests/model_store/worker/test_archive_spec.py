"""An archive's settings are refused when the archive is built, with the worker's own checks,
not later inside TorchServe (where a bad one builds fine and every worker dies at load)."""

from __future__ import annotations

import pytest

from model_store.__main__ import main
from model_store.worker.archive import ArchiveSpec


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
