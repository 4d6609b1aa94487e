"""The model benchmark runs end to end (tiny, eager) and its JSON agrees with its table."""

from __future__ import annotations

import json

import pytest

from bench import models as bench_models
from bench.common import markdown_table, percentile


def test_percentile_nearest_rank():
    samples = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(samples, 50) == 3.0
    assert percentile(samples, 90) == 5.0
    assert percentile(samples, 0) == 1.0


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
