"""Model benchmark: img/s, latency, memory and compile time per model, eager vs compiled.

    python -m bench.models                                  # CPU, all models, batch 1/8/32
    python -m bench.models --models resnet50,eca_resnet50 --batch-sizes 8 --iters 10
    python -m bench.models --device cuda                    # adds batch 256, bf16 autocast

Shared CPUs drift (steal time here often reads 100%), so every (model, mode) variant is built
in this one process and timed in interleaved rounds: A, B, C, A, B, C ... Medians over rounds
expose all variants to the same drift, so ratios to ``resnet50`` (same run, same mode, same
batch) hold even when absolute numbers move. Memory is each variant's peak allocation on CUDA;
on CPU it is this process's peak RSS (all variants together).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import environment, markdown_table, summarize_latencies, write_results

MODES = ("eager", "compiled", "compiled-no-inner-squeeze")
GATE_FROM_MEAN = {"se_resnet50", "eca_resnet50"}  # the only models the ablation changes


@dataclass
class Variant:
    model: str
    mode: str
    params: int
    attention_params: int
    run: Any  # InferenceModel
    results: list[dict[str, Any]] = field(default_factory=list)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_variants(args: argparse.Namespace) -> list[Variant]:
    import torch

    from model_store import TINY_ARCH, count_parameters, create_model, optimize_for_inference

    variants = []
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, **(TINY_ARCH if args.tiny else {}))
        for mode in args.modes:
            if mode == "compiled-no-inner-squeeze" and name not in GATE_FROM_MEAN:
                continue
            run = optimize_for_inference(
                model,
                device=args.device,
                compile=mode != "eager",
                mode=args.compile_mode,
                fold_bn=mode != "eager",
                squeeze_inner=mode == "compiled",
            )
            variants.append(Variant(name, mode, *count_parameters(model), run))
    return variants


def measure(variants: list[Variant], args: argparse.Namespace) -> None:
    import torch
    import torch._inductor.metrics as inductor_metrics

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    size = 64 if args.tiny else 224
    started = time.perf_counter()
    for batch_size in args.batch_sizes:
        x = torch.randn(batch_size, 3, size, size, device=device)
        warmup: dict[int, tuple[float, int]] = {}
        for index, variant in enumerate(variants):  # untimed: compiles this batch shape
            progress(
                f"batch {batch_size}: warming up {variant.model} {variant.mode} "
                f"[{index + 1}/{len(variants)}] ({time.perf_counter() - started:.0f} s)"
            )
            inductor_metrics.reset()
            start = time.perf_counter()
            for _ in range(args.warmup):
                variant.run(x)
            if cuda:
                torch.cuda.synchronize()
            warmup[index] = (time.perf_counter() - start, inductor_metrics.generated_kernel_count)
        timings: dict[int, list[float]] = {i: [] for i in range(len(variants))}
        peaks: dict[int, float] = {}
        for round_ in range(args.iters):
            progress(f"batch {batch_size}: round {round_ + 1}/{args.iters}")
            for index, variant in enumerate(variants):
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                variant.run(x)
                if cuda:
                    torch.cuda.synchronize()
                    peaks[index] = torch.cuda.max_memory_allocated() / 2**20
                timings[index].append(time.perf_counter() - start)
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for index, variant in enumerate(variants):
            stats = summarize_latencies(timings[index])
            warmup_s, kernels = warmup[index]
            variant.results.append(
                {
                    "batch_size": batch_size,
                    **stats,
                    "img_per_s": batch_size / (stats["median_ms"] / 1000),
                    "memory_mb": peaks.get(index, peak_rss),
                    "warmup_s": warmup_s,
                    "inductor_kernels": kernels if variant.run.compile_requested else None,
                }
            )


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
                "compiled": v.run.compiled,
                "compile_error": v.run.compile_error,
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
                ]
            )
    rows.sort(key=lambda row: (row[2], MODES.index(row[1].split()[0])))
    return markdown_table(headers, rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import torch

    from model_store import MODELS
    from model_store.models import parse_model_names

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        type=parse_model_names,
        default="all",
        help=f"comma list or 'all' ({', '.join(MODELS)})",
    )
    parser.add_argument(
        "--modes", default="eager,compiled", help=f"comma list of {', '.join(MODES)}"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-sizes", help="comma list; default 1,8,32 (and 256 on CUDA)")
    parser.add_argument("--iters", type=int, help="timed interleaved rounds (CPU 5, CUDA 50)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (compiles)")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny configuration, 64 px (smoke runs)"
    )
    parser.add_argument(
        "--out", type=Path, help="JSON path (default: bench/results/models-<device>-<time>.json)"
    )
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.modes = args.modes.split(",")
    if unknown := [m for m in args.modes if m not in MODES]:
        parser.error(f"unknown modes {unknown}; choose from {list(MODES)}")
    default_sizes = "1,8,32,256" if args.device == "cuda" else "1,8,32"
    args.batch_sizes = [int(b) for b in (args.batch_sizes or default_sizes).split(",")]
    args.iters = args.iters or (50 if args.device == "cuda" else 5)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    variants = build_variants(args)
    measure(variants, args)
    records = to_records(variants)
    config = {k: v for k, v in vars(args).items() if k != "out"}
    payload = {
        "benchmark": "models",
        "environment": environment(args.device),
        "config": config,
        "records": records,
    }
    path = write_results(f"models-{args.device}", payload, args.out)
    print(table(records))
    print(f"\nJSON: {path}")
    return payload


if __name__ == "__main__":
    main()
