"""The protocol benchmark: every encoding of the same images is answered (a non-200 stops the
run) and measured; its table and JSON agree."""

from __future__ import annotations

import json

from bench import protocols


def test_every_encoding_is_answered_and_measured(tmp_path, capsys):
    out = tmp_path / "protocols.json"
    payload = protocols.main(
        ["--rounds", "1", "--seconds", "0.3", "--clients", "2", "--out", str(out)]
    )
    rows = {row["encoding"]: row for row in payload["results"]}
    assert set(rows) == {
        "v1 raw body",
        "v1 multipart",
        "v2 BYTES binary",
        "v2 BYTES base64 JSON",
        "v2 FP32 binary",
        "v2 FP32 JSON",
    }
    assert all(row["requests"] > 0 and row["gateway_cpu_ms_per_image"] > 0 for row in rows.values())
    assert rows["v2 FP32 JSON"]["request_kib"] > 4 * rows["v2 FP32 binary"]["request_kib"]
    assert json.loads(out.read_text())["results"] == payload["results"]
    assert "| v2 BYTES binary |" in capsys.readouterr().out
