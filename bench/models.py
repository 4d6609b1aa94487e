"""Model benchmark: img/s, latency, memory and compile time per model and runtime.

    python -m bench.models                                  # CPU, all models, batch 1/8/32
    python -m bench.models --models resnet50,eca_resnet50 --batch-sizes 8 --iters 10
    python -m bench.models --modes compiled,openvino,onnxruntime,timm-compiled   # runtimes
    python -m bench.models --device cuda                    # adds batch 256, bf16 autocast
    python -m bench.models --modes aot,aot-bf16,aot-int8,openvino,openvino-bf16,openvino-int8,\
        onnxruntime,onnxruntime-int8 --batch-sizes 1,2,4,8         # precisions side by side

Modes: ``eager``; ``compiled`` (our inductor path just in time); ``aot`` (AOTInductor
packages, what the ``inductor`` runtime's archives serve); ``compiled-no-inner-squeeze`` (the
ablation of the early squeeze); ``openvino`` (what the ``openvino`` runtime serves);
``onnxruntime`` (a peer, not served: the same optimised model exported to ONNX); each with
``-bf16`` or ``-int8`` for that precision where the runtime has it
(``bench/precision_runners.py``: ``aot-bf16``, ``aot-int8``, ``openvino-bf16``,
``openvino-int8``, ``onnxruntime-int8``); ``timm-compiled`` (a peer: timm's own ResNet-50 with
the same attention, ``torch.compile`` with freezing; only when timm is importable, which needs
torchvision: run it from a separate venv, see bench/README.md). With several runtimes a second
table gives img/s per runtime side by side, per precision, and ours over the fastest peer.

Shared CPUs drift (steal time here often reads 100%), so every (model, mode) variant is built
in this one process and timed in interleaved rounds: A, B, C, A, B, C ... Medians over rounds
expose all variants to the same drift, so ratios to ``resnet50`` (same run, same mode, same
batch) hold even when absolute numbers move. Memory is each variant's peak allocation on CUDA;
on CPU it is this process's peak RSS (all variants together).
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contract.lists import comma_separated
from model_store.worker.archive import parse_candidate_name
from perf.common import (
    comma_list,
    environment,
    progress,
    summarize_latencies,
    write_results,
)

from .model_variants import (
    MODES,
    OURS,
    Variant,
    runtime_comparison,
    runtime_table,
    table,
    to_records,
)
from .precision_runners import RUNTIME_BUILDERS

TIMM_ATTENTION = {
    "resnet50": None,
    "se_resnet50": "se",
    "eca_resnet50": "eca",
    "cbam_resnet50": "cbam",
}
"""timm's name for each of our attention kinds (timm has no SA block)."""


def build_variants(args: argparse.Namespace) -> list[Variant]:
    import torch

    from model_store import count_parameters, create_model, optimize_for_inference, tiny_arch
    from model_store.zoo.models import gates_from_mean

    variants = []
    size = input_size(args)
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, **(tiny_arch(name) if args.tiny else {}))
        counts = count_parameters(model)
        optimized = None  # what the peer runtimes run, made once per model
        for mode in args.modes:
            if mode == "compiled-no-inner-squeeze" and not gates_from_mean(name):
                continue
            if mode == "timm-compiled" and name not in TIMM_ATTENTION:
                continue
            runtime, precision = parse_candidate_name(mode)
            if runtime in RUNTIME_BUILDERS:
                if optimized is None:
                    optimized = optimize_for_inference(model, compile=False).model
                progress(f"building {name} {mode}")
                run = RUNTIME_BUILDERS[runtime](optimized, precision, args.batch_sizes, size)
                variants.append(Variant(name, mode, *counts, run))
                continue
            if mode == "timm-compiled":
                variants.append(Variant(name, mode, *counts, timm_compiled(name, args)))
                continue
            inductor = optimize_for_inference(
                model,
                device=args.device,
                compile=mode != "eager",
                mode=args.compile_mode,
                fold_bn=mode != "eager",
                squeeze_inner=mode == OURS,
            )
            variants.append(Variant(name, mode, *counts, inductor, inductor))
    return variants


def input_size(args: argparse.Namespace) -> int:
    return 64 if args.tiny else 224


def timm_compiled(name: str, args: argparse.Namespace) -> Callable[[Any], Any]:
    """timm's ResNet-50 with the same attention kind, compiled as timm users would (freezing on
    while tracing, like ours). Needs timm, which needs torchvision: see bench/README.md."""
    import torch
    from timm.models.resnet import Bottleneck, ResNet

    torch.manual_seed(0)
    block_args = {"attn_layer": TIMM_ATTENTION[name]} if TIMM_ATTENTION[name] else {}
    model = ResNet(Bottleneck, [3, 4, 6, 3], block_args=block_args).eval()
    model = model.to(memory_format=torch.channels_last)
    compiled = torch.compile(model, dynamic=False)

    @torch.inference_mode()
    def run(x: Any) -> Any:
        with torch._inductor.config.patch(freezing=True):
            return compiled(x.contiguous(memory_format=torch.channels_last))

    return run


def measure(variants: list[Variant], args: argparse.Namespace) -> None:
    import torch
    import torch._inductor.metrics as inductor_metrics

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    size = input_size(args)
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
                    "inductor_kernels": kernels if "compiled" in variant.mode else None,
                    "convolutions": getattr(variant.run, "convolutions", None),
                }
            )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import torch

    from model_store import MODELS
    from model_store.zoo.registry import parse_model_names

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
        "--modes",
        type=comma_list(),
        default="eager,compiled,openvino,onnxruntime",
        help=f"comma list of {', '.join(MODES)}",
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
    if unknown := [m for m in args.modes if m not in MODES]:
        parser.error(f"unknown modes {unknown}; choose from {list(MODES)}")
    if "timm-compiled" in args.modes and importlib.util.find_spec("timm") is None:
        parser.error("timm-compiled needs timm (and torchvision): see bench/README.md")
    default_sizes = "1,8,32,256" if args.device == "cuda" else "1,8,32"
    args.batch_sizes = comma_separated(args.batch_sizes or default_sizes, int)
    args.iters = args.iters or (50 if args.device == "cuda" else 5)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    variants = build_variants(args)
    measure(variants, args)
    records = to_records(variants)
    comparison = runtime_comparison(records)
    config = {k: v for k, v in vars(args).items() if k != "out"}
    payload = {
        "benchmark": "models",
        "environment": environment(args.device),
        "config": config,
        "records": records,
        "runtimes": comparison,
    }
    path = write_results(f"models-{args.device}", payload, args.out)
    print(table(records))
    if len({m for row in comparison for m in row["img_per_s"]}) > 1:
        print("\nRuntimes side by side (img/s, same interleaved rounds):\n")
        print(runtime_table(comparison))
    print(f"\nJSON: {path}")
    return payload


if __name__ == "__main__":
    main()
