"""Compare attention variants under the same load, with a verdict an engineer can act on.

    python -m loadtests.compare                                # quick profile, ~10 min
    python -m loadtests.compare --profile thorough             # the full open-loop sweep
    python -m loadtests.compare --start-stack --tiny --trials 2 --duration 5
    python -m loadtests.compare --workers 2                    # Locust distributed, local workers

Against one running stack: per load level (closed-loop users, then open-loop offered rates),
``--trials`` trials per model in interleaved order (A B, B A, ...), each after its own warm-up.
Each trial is checked (nothing compiled while measured, the runtime stayed, Locust's and the
gateway's counts agree) and left out if not. The report (``loadtests/reports/<timestamp>/``)
gives, per level, the second model over the first for throughput and p99 with a bootstrap 95%
interval and the verdict it allows, the capacity at the p99 SLO, plots and the raw numbers.
Parts: ``locustfile.py`` (the users), ``runner.py`` (one trial), ``stats.py`` (intervals,
capacity), ``report.py`` (markdown, plots).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from contract.lists import comma_separated
from model_store.zoo.registry import DEFAULT_MODELS, parse_model_names
from perf.common import progress

from .report import write_report
from .runner import Generator, Load, trial

HERE = Path(__file__).parent
REPORTS = HERE / "reports"
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"users": "8", "rates": "10", "trials": 5, "duration": 12.0, "warmup": 5.0},
    "thorough": {
        "users": "8",
        "rates": "6,12,18,24,30",
        "trials": 5,
        "duration": 20.0,
        "warmup": 5.0,
    },
}
"""``quick`` (the ``make loadtest`` default) finishes in about 10 minutes on 2 cores."""


def is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def levels(args: argparse.Namespace) -> list[Load]:
    return [Load("closed", u) for u in args.users] + [Load("open", r) for r in args.rates]


def run_trials(url: str, args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """Every level, every trial, the models in alternating order."""
    rows = []
    plan = levels(args)
    total = len(plan) * args.trials * len(args.models)
    for load in plan:
        for index in range(args.trials):
            order = args.models if index % 2 == 0 else args.models[::-1]
            for model in order:
                progress(
                    f"[{len(rows) + 1}/{total}] {model}, {load.label}, trial {index + 1}: "
                    f"warm-up {args.warmup:g} s, measure {args.duration:g} s"
                )
                prefix = out / f"{model}-{load.mode}-{load.value:g}-t{index + 1}"
                row = trial(url, model, load, args.generator, args.duration, args.warmup, prefix)
                row["trial"] = index
                rows.append(row)
                progress(
                    f"    {row['img_per_s']:.1f} img/s, p50 {row['p50_ms']:.0f} ms, "
                    f"p99 {row['p99_ms']:.0f} ms, errors {row['error_pct']:.1f}%"
                    + (f", INVALID: {'; '.join(row['invalid'])}" if row["invalid"] else "")
                )
    return rows


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    return names[0] if names else platform.processor()


def environment(url: str, started_here: bool) -> dict[str, Any]:
    """The machine and what serves: CPU, cores, versions, and each model as the gateway lists
    it (runtime, precision, parameters)."""
    from importlib.metadata import version

    listed = httpx.get(f"{url}/v1/models", timeout=30).json()["models"]
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        **{package: version(package) for package in ("torch", "torchserve", "locust")},
        "served": ", ".join(
            f"{m['name']} ({m['runtime']} {m.get('precision') or 'fp32'}, "
            f"{m['parameters']:,} parameters)"
            for m in listed
        ),
        "stack": "started here: TorchServe + gateway, default settings (service/settings.py)"
        if started_here
        else f"given: {url}",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


@contextmanager
def started_stack(models: list[str], tiny: bool) -> Iterator[str]:
    """TorchServe and the gateway on free loopback ports, for --start-stack."""
    from perf.stack import start_stack

    with (
        tempfile.TemporaryDirectory(prefix="loadtest-stack-") as tmp,
        start_stack(models, Path(tmp), tiny=tiny) as stack,
    ):
        yield stack.gateway_url


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        type=parse_model_names,
        default=",".join(DEFAULT_MODELS),
        help="comma list; ratios are the second over the first",
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--users", help="closed-loop levels: users, a comma list ('' for none)")
    parser.add_argument("--rates", help="open-loop levels: offered req/s, a comma list")
    parser.add_argument("--trials", type=int, help="trials per model and level (>= 2)")
    parser.add_argument("--duration", type=float, help="measured seconds per trial")
    parser.add_argument("--warmup", type=float, help="uncounted seconds before each trial")
    parser.add_argument("--slo-ms", type=float, default=1000.0, help="p99 target of the capacity")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", default="http://127.0.0.1:8000", help="a running gateway")
    target.add_argument(
        "--start-stack", action="store_true", help="start TorchServe + gateway here"
    )
    parser.add_argument("--allow-remote", action="store_true", help="permit a non-loopback --url")
    parser.add_argument(
        "--tiny", action="store_true", help="with --start-stack: tiny trained models"
    )
    distributed = parser.add_argument_group("Locust distributed mode")
    distributed.add_argument("--workers", type=int, default=0, help="local worker processes")
    distributed.add_argument(
        "--expect-workers", type=int, default=0, help="remote workers to wait for (--master-host)"
    )
    distributed.add_argument("--master-bind-host", default="127.0.0.1")
    distributed.add_argument("--master-port", type=int, default=5557)
    parser.add_argument(
        "--user-seconds",
        type=float,
        default=Generator.user_seconds,
        help="open loop: users per offered req/s (enough that each is idle most of the time)",
    )
    parser.add_argument(
        "--generator-nice",
        type=int,
        default=Generator.nice,
        help="the Locust processes' niceness: above the stack's, so the generator never takes "
        "the CPUs the stack under test needs; 0 where other work shares the machine (a test "
        "suite in parallel), which would starve a niced generator",
    )
    parser.add_argument(
        "--out", type=Path, help="report folder (default loadtests/reports/<timestamp>)"
    )
    args = parser.parse_args(argv)
    for key, value in PROFILES[args.profile].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.users = comma_separated(str(args.users), int)
    args.rates = comma_separated(str(args.rates), float)
    if len(args.models) < 2 or args.trials < 2:
        parser.error("a comparison needs at least two models and two trials")
    if not args.start_stack and not is_loopback(args.url) and not args.allow_remote:
        parser.error(
            f"refusing to load {args.url}: not a loopback address "
            "(pass --allow-remote if you mean it)"
        )
    args.generator = Generator(
        workers=args.workers,
        expect_workers=args.expect_workers,
        master_bind_host=args.master_bind_host,
        master_port=args.master_port,
        user_seconds=args.user_seconds,
        nice=args.generator_nice,
    )
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    out = args.out or REPORTS / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    with started_stack(args.models, args.tiny) if args.start_stack else _given(args.url) as url:
        args.url = url
        rows = run_trials(url, args, out)
        facts = environment(url, args.start_stack)
    config = {
        key: value if isinstance(value, int | float | str | list) else str(value)
        for key, value in vars(args).items()
        if key not in ("out", "generator")
    } | {
        "locust": "one process"
        if not args.generator.distributed
        else (f"master + {args.workers} local and {args.expect_workers} remote workers"),
    }
    report = write_report(rows, args.models, config, facts, out)
    print(report.read_text())
    print(f"report: {report}")
    return report


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
