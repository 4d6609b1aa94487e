"""What every benchmark shares: timing statistics, environment facts, result files."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from contract.lists import comma_separated

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
"""Where every benchmark writes its JSON (and PNGs): ``bench/results/``."""


def comma_list(cast: Callable[[str], Any] = str) -> Callable[[str], list[Any]]:
    """An argparse ``type``: ``"1,2,,4"`` -> ``[cast("1"), cast("2"), cast("4")]`` ("" -> [])."""
    return lambda text: comma_separated(text, cast)


def progress(message: str) -> None:
    """Long work says what it is doing, on stderr (the tables go to stdout)."""
    print(message, file=sys.stderr, flush=True)


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize_latencies(seconds: Sequence[float]) -> dict[str, float]:
    return {
        "median_ms": statistics.median(seconds) * 1000,
        "p90_ms": percentile(seconds, 90) * 1000,
        "min_ms": min(seconds) * 1000,
    }


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it, with its family and model numbers (a VM
    may say only "AMD EPYC": family 25 model 1 is Zen 3, model 17 Zen 4). Every recorded
    number names it: these machines alternate between classes."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name", platform.processor() or "unknown")
    return f"{name} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"


def environment(device: str) -> dict[str, Any]:
    import torch

    from model_store.zoo.aot import machine_key

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_instruction_sets": machine_key()["instruction_sets"],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "command": command_line(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def command_line() -> str:
    """How this run was started, paths relative to the repository (no one else's home dir)."""
    return " ".join([Path(sys.orig_argv[0]).name, *map(repo_relative, sys.orig_argv[1:])])


def repo_relative(arg: str) -> str:
    """``arg`` with an absolute path under the repository made relative to it (``--out=...``
    included)."""
    prefix, equals, value = arg.rpartition("=") if arg.startswith("--") else ("", "", arg)
    path = Path(value)
    if path.is_absolute() and path.is_relative_to(REPO_ROOT):
        value = str(path.relative_to(REPO_ROOT))
    return f"{prefix}{equals}{value}"


def write_results(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    """Write ``payload`` to ``out`` or a timestamped file under bench/results/."""
    if out is None:
        out = RESULTS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return out


def report(
    name: str, args: Any, rows: list[dict[str, Any]], table: str | Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """Write the JSON result (config, environment, rows) and print the table (a markdown
    table, or the ``(header, key)`` columns to make it of): a benchmark's last step."""
    config = {k: v for k, v in vars(args).items() if k != "out"}
    payload = {
        "benchmark": name,
        "environment": environment("cpu"),
        "config": config,
        "results": rows,
    }
    path = write_results(name, payload, args.out)
    print(table if isinstance(table, str) else columns_table(table, rows))
    print(f"\nJSON: {path}")
    return payload


def columns_table(columns: Sequence[tuple[str, str]], rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of ``(header, key)`` columns picked from result dicts."""
    return markdown_table(
        [h for h, _ in columns], [[row.get(k) for _, k in columns] for row in rows]
    )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            if 0 < abs(value) < 0.01:
                return f"{value:.1e}"
            return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
