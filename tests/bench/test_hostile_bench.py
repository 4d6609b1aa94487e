"""``python -m bench.hostile``: every hostile input that costs work is refused by the check the
gateway runs on it, and what the image ones cost Pillow unbounded is measured beside it."""

from __future__ import annotations

import json

from bench.hostile import HOSTILE_KINDS, main


def test_each_costly_hostile_input_is_refused_by_the_gateways_check(tmp_path):
    out = tmp_path / "hostile.json"
    main(["--scan-repeats", "150", "--out", str(out)])
    rows = {row["kind"]: row for row in json.loads(out.read_text())["results"]}
    assert set(rows) == {"scan_bomb", "png_text_bomb", "delimiter_look_alikes", "json_bomb"}
    assert all(row["refusal"] != "accepted" for row in rows.values())
    assert all(row["status"] == HOSTILE_KINDS[kind].expected_status for kind, row in rows.items())
    assert rows["scan_bomb"]["unbounded_ms"] > 0 and rows["json_bomb"]["unbounded_ms"] is None
