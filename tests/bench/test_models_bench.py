"""The model benchmark runs end to end (tiny, eager) and its JSON agrees with its table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench import models as bench_models
from perf.common import RESULTS_DIR, command_line, markdown_table, percentile


def test_percentile_nearest_rank():
    samples = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(samples, 50) == 3.0
    assert percentile(samples, 90) == 5.0
    assert percentile(samples, 0) == 1.0


def test_every_benchmark_writes_under_bench_results_wherever_the_harness_lives():
    assert Path(__file__).resolve().parents[2] / "bench" / "results" == RESULTS_DIR
    assert RESULTS_DIR.is_dir()


def test_the_recorded_command_names_paths_relative_to_the_repository(monkeypatch):
    root = Path(__file__).resolve().parents[2]
    argv = ["/usr/bin/python3", "-m", "bench.models", "--out", str(root / "bench/results/x.json")]
    monkeypatch.setattr(sys, "orig_argv", [*argv, f"--checkpoint={root}/w.pt", "/tmp/elsewhere"])
    assert command_line() == (
        "python3 -m bench.models --out bench/results/x.json --checkpoint=w.pt /tmp/elsewhere"
    )


def test_markdown_table_formats_numbers():
    text = markdown_table(["a", "b"], [["x", 1234.5], ["y", None]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x | 1,234 |", "| y |  |"]


def test_tiny_benchmark_writes_consistent_results(tmp_path, capsys):
    out = tmp_path / "models.json"
    argv = [
        "--models",
        "resnet50,eca_resnet50",
        "--modes",
        "eager",
        "--tiny",
        "--batch-sizes",
        "1,2",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    payload = bench_models.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(payload))
    records = {r["model"]: r for r in payload["records"]}
    assert set(records) == {"resnet50", "eca_resnet50"}
    for record in records.values():
        assert [row["batch_size"] for row in record["results"]] == [1, 2]
        for row in record["results"]:
            assert row["img_per_s"] == pytest.approx(row["batch_size"] / (row["median_ms"] / 1000))
    for base_row, eca_row in zip(
        records["resnet50"]["results"], records["eca_resnet50"]["results"], strict=True
    ):
        assert base_row["ratio_to_resnet50"] == 1.0
        assert eca_row["ratio_to_resnet50"] == pytest.approx(
            eca_row["img_per_s"] / base_row["img_per_s"]
        )
    assert records["eca_resnet50"]["attention_params"] > 0
    assert payload["environment"]["torch"]
    assert "| eca_resnet50 | eager | 2 |" in capsys.readouterr().out


def test_unknown_model_is_a_usage_error():
    with pytest.raises(SystemExit):
        bench_models.main(["--models", "vgg16"])


@pytest.mark.slow
def test_runtimes_are_measured_side_by_side(tmp_path, capsys):
    """Our compiled path against the OpenVINO runtime and ONNX Runtime, in the same rounds."""
    out = tmp_path / "runtimes.json"
    payload = bench_models.main(
        ["--models", "eca_resnet50", "--modes", "compiled,openvino,onnxruntime", "--tiny",
         "--batch-sizes", "1,2", "--iters", "2", "--warmup", "1", "--device", "cpu",
         "--out", str(out)]
    )  # fmt: skip
    modes = {r["mode"]: r for r in payload["records"]}
    assert set(modes) == {"compiled", "openvino", "onnxruntime"}
    assert modes["compiled"]["compiled"] and modes["compiled"]["compile_error"] is None
    rows = payload["runtimes"]
    assert [(r["model"], r["batch_size"]) for r in rows] == [
        ("eca_resnet50", 1),
        ("eca_resnet50", 2),
    ]
    for row in rows:
        rates = row["img_per_s"]
        assert set(rates) == {"compiled", "openvino", "onnxruntime"}
        assert row["fastest_peer"] == max(("openvino", "onnxruntime"), key=rates.__getitem__)
        assert row["ours_over_fastest_peer"] == pytest.approx(
            rates["compiled"] / rates[row["fastest_peer"]]
        )
    assert "| eca_resnet50 | 1 |" in capsys.readouterr().out.split("Runtimes side by side")[1]


def test_the_timm_peer_needs_timm(monkeypatch):
    monkeypatch.setattr(bench_models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit):
        bench_models.parse_args(["--modes", "compiled,timm-compiled"])


@pytest.mark.slow
def test_precisions_are_measured_side_by_side_with_peers_at_the_same_precision(tmp_path):
    """Ours as archives serve it (AOTInductor) in fp32 and int8, beside OpenVINO and ONNX
    Runtime int8, in the same rounds; each precision compared only within itself."""
    payload = bench_models.main(
        ["--models", "eca_resnet50", "--modes", "aot,aot-int8,openvino-int8,onnxruntime-int8",
         "--tiny", "--batch-sizes", "1,2", "--iters", "2", "--warmup", "1", "--device", "cpu",
         "--out", str(tmp_path / "precisions.json")]
    )  # fmt: skip
    rows = {(r["precision"], r["batch_size"]): r for r in payload["runtimes"]}
    assert set(rows) == {("fp32", 1), ("fp32", 2), ("int8", 1), ("int8", 2)}
    for batch_size in (1, 2):
        assert set(rows["fp32", batch_size]["img_per_s"]) == {"aot"}
        int8 = rows["int8", batch_size]
        assert set(int8["img_per_s"]) == {"aot", "openvino", "onnxruntime"}
        rates = int8["img_per_s"]
        assert int8["ours_over_fastest_peer"] == pytest.approx(
            rates["aot"] / max(rates["openvino"], rates["onnxruntime"])
        )
