"""What ``bench.models`` measures (the modes: ours, the served one, the peers, low precisions;
one ``Variant`` per model and mode) and its results as records and tables: each variant against
the plain ResNet-50, each runtime against its peers at the same precision."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from model_store.worker.archive import parse_candidate_name
from perf.common import markdown_table

OURS = "compiled"
SERVED = "aot"
"""Ours as an archive serves it, at each precision: ``aot``, ``aot-bf16``, ``aot-int8``."""
PEERS = ("openvino", "onnxruntime", "timm-compiled")
LOW_PRECISION_MODES = (
    "aot-bf16", "aot-int8", "openvino-bf16", "openvino-int8", "onnxruntime-int8",
)  # fmt: skip
MODES = ("eager", OURS, "compiled-no-inner-squeeze", SERVED, *PEERS, *LOW_PRECISION_MODES)


@dataclass
class Variant:
    model: str
    mode: str
    params: int
    attention_params: int
    run: Callable[[Any], Any]
    inductor: Any = None  # the InferenceModel for eager/compiled modes: compile state, kernels
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def compiled(self) -> bool:
        return self.inductor.compiled if self.inductor is not None else True


def to_records(variants: list[Variant], baseline: str = "resnet50") -> list[dict[str, Any]]:
    """JSON records, each row with img/s over the baseline's at the same mode and batch size."""
    base = {
        (v.mode, row["batch_size"]): row["img_per_s"]
        for v in variants
        if v.model == baseline
        for row in v.results
    }
    records = []
    for v in variants:
        base_mode = "compiled" if v.mode.startswith("compiled") else v.mode
        for row in v.results:
            reference = base.get((base_mode, row["batch_size"]))
            row[f"ratio_to_{baseline}"] = row["img_per_s"] / reference if reference else None
        records.append(
            {
                "model": v.model,
                "mode": v.mode,
                "params": v.params,
                "attention_params": v.attention_params,
                "compiled": v.compiled,
                "compile_error": v.inductor.compile_error if v.inductor is not None else None,
                "results": v.results,
            }
        )
    return records


def table(records: list[dict[str, Any]]) -> str:
    headers = [
        "model",
        "mode",
        "batch",
        "median ms",
        "p90 ms",
        "img/s",
        "vs resnet50",
        "memory MB",
        "warm-up s",
        "kernels",
        "convs (residual fused)",
    ]
    rows = []
    for r in records:
        fell_back = r["mode"] != "eager" and not r["compiled"]
        mode = r["mode"] + (" (FELL BACK TO EAGER)" if fell_back else "")
        for row in r["results"]:
            rows.append(
                [
                    r["model"],
                    mode,
                    row["batch_size"],
                    row["median_ms"],
                    row["p90_ms"],
                    row["img_per_s"],
                    row["ratio_to_resnet50"],
                    row["memory_mb"],
                    row["warmup_s"],
                    row["inductor_kernels"],
                    _convolutions(row.get("convolutions")),
                ]
            )
    rows.sort(key=lambda row: (row[2], MODES.index(row[1].split()[0])))
    return markdown_table(headers, rows)


def _convolutions(counted: dict[str, int] | None) -> str | None:
    return f"{counted['calls']} ({counted['residual_fused']})" if counted else None


def runtime_comparison(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, batch size and precision: img/s of ours (``aot``, what an archive serves; in
    float32 also the JIT ``compiled``) and of each peer runtime measured at that precision, and
    ours over the fastest peer (all from the same interleaved rounds)."""
    rates: dict[tuple[str, int, str], dict[str, float]] = {}
    for r in records:
        runtime, precision = parse_candidate_name(r["mode"])
        if runtime in (OURS, SERVED, *PEERS) and r["mode"] != "compiled-no-inner-squeeze":
            for row in r["results"]:
                key = (r["model"], row["batch_size"], precision)
                rates.setdefault(key, {})[runtime] = row["img_per_s"]
    rows = []
    for (model, batch_size, precision), by_runtime in sorted(
        rates.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])
    ):
        peers = {m: v for m, v in by_runtime.items() if m not in (OURS, SERVED)}
        best = max(peers, key=peers.__getitem__) if peers else None
        ours = by_runtime.get(SERVED, by_runtime.get(OURS))
        rows.append(
            {
                "model": model,
                "batch_size": batch_size,
                "precision": precision,
                "img_per_s": by_runtime,
                "fastest_peer": best,
                "ours_over_fastest_peer": ours / peers[best] if best and ours else None,
            }
        )
    return rows


def runtime_table(comparison: list[dict[str, Any]]) -> str:
    runtimes = [
        m for m in (OURS, SERVED, *PEERS) if any(m in row["img_per_s"] for row in comparison)
    ]
    headers = [
        "model", "batch", "precision", *[f"{m} img/s" for m in runtimes], "fastest peer",
        "ours / it",
    ]  # fmt: skip
    rows = [
        [
            row["model"],
            row["batch_size"],
            row["precision"],
            *[row["img_per_s"].get(m) for m in runtimes],
            row["fastest_peer"],
            row["ours_over_fastest_peer"],
        ]
        for row in comparison
    ]
    return markdown_table(headers, rows)
