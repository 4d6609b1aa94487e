"""AOTInductor packages compiled with one thread count and served with another.

    python -m bench.threads      # eca_resnet50: built on 1 and 2 threads, served on 1 and 2
    python -m bench.threads --buckets 1,8 --rounds 5 --build-threads 2 --serve-threads 1

Per batch bucket, in a process serving with S intra-op threads: the JIT path compiled there
(``torch.compile`` with freezing: packed for S threads by construction) beside two packages
compiled in a process with B threads:

- ``constants inside`` (how archives were built until 2026-12-07): oneDNN's weight layouts and
  the kernels' thread count fixed by the compiling process;
- ``made at load`` (``model_store.zoo.aot`` today): no constants in the package, each made
  again at load by the serving process from the model's weights, kernels that ask OpenMP
  for the thread count.

Variants are timed in interleaved rounds inside each serving process (median ms per batch), and
each one's oneDNN weight reorders per call are counted from ``ONEDNN_VERBOSE`` (a package whose
layouts do not match the serving process reorders them again on every call). Goal: every
package within 1.1x of the JIT at the serving thread count. Table on stdout, JSON in
bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from perf.common import (
    REPO_ROOT,
    comma_list,
    progress,
    report,
)

INSIDE, AT_LOAD, JIT = "constants inside", "made at load", "jit"
OLD_OPTIONS = {"freezing": True}
"""The archives' compile options until 2026-12-07 (constants in the package)."""


def _model(name: str) -> Any:
    import torch

    from model_store.zoo.models import create_model
    from model_store.zoo.optimize import optimize_for_inference

    torch.manual_seed(0)
    return optimize_for_inference(create_model(name).eval(), compile=False).model


def build(model_name: str, buckets: list[int], directory: Path) -> None:
    """Both package kinds, compiled with this process's thread count."""
    from model_store.zoo.aot import compile_package, compile_packages

    model = _model(model_name)
    compile_packages(model, buckets, 224, directory / AT_LOAD, progress)
    for bucket in buckets:
        compile_package(model, bucket, 224, directory / INSIDE / f"batch_{bucket}.pt2", OLD_OPTIONS)


@contextmanager
def _stdout_to(path: Path):
    """oneDNN writes its verbose lines to the C stdout: sent to ``path`` meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    with path.open("wb") as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def reorders_per_call(run: Any, x: Any, scratch: Path) -> int:
    import torch

    with _stdout_to(scratch), torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        run(x)
    lines = scratch.read_text(errors="replace").splitlines()
    return sum(",exec," in line and ",reorder," in line for line in lines)


def serve(model_name: str, buckets: list[int], builds: dict[str, Path], rounds: int) -> list[dict]:
    """In this process (its thread count): every variant per bucket, interleaved."""
    import torch

    from model_store.zoo.aot import load_packages
    from model_store.zoo.optimize import optimize_for_inference
    from model_store.zoo.runtimes import fresh_inputs

    model = _model(model_name)
    jit = optimize_for_inference(model, compile=True, fold_bn=False, squeeze_inner=False)
    variants: dict[str, dict[int, Any]] = {JIT: {b: jit for b in buckets}}
    for built, directory in builds.items():
        variants[f"{AT_LOAD} ({built})"] = load_packages(directory / AT_LOAD, buckets, 224, model)
        variants[f"{INSIDE} ({built})"] = {
            b: torch._inductor.aoti_load_package(str(directory / INSIDE / f"batch_{b}.pt2"))
            for b in buckets
        }
    rows = []
    scratch = Path(tempfile.mkdtemp()) / "onednn.log"
    with torch.inference_mode():
        for bucket in buckets:
            x = fresh_inputs(bucket, 224, seed=bucket)
            for runs in variants.values():  # first calls (JIT: compiling) untimed
                runs[bucket](x.clone())
                runs[bucket](x.clone())
            seconds: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(rounds):
                for name, runs in variants.items():
                    started = time.perf_counter()
                    runs[bucket](x)
                    seconds[name].append(time.perf_counter() - started)
            for name, runs in variants.items():
                rows.append(
                    {
                        "serve_threads": torch.get_num_threads(),
                        "batch": bucket,
                        "variant": name,
                        "median_ms": statistics.median(seconds[name]) * 1000,
                        "reorders_per_call": reorders_per_call(runs[bucket], x, scratch),
                    }
                )
            progress(f"  {torch.get_num_threads()} threads, batch {bucket}: done")
    return rows


def _child(*args: str, threads: int) -> str:
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "bench.threads", *args]
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True, check=True
    )
    return done.stdout


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="eca_resnet50")
    parser.add_argument("--buckets", type=comma_list(int), default="1,2,4,8")
    parser.add_argument("--build-threads", type=comma_list(int), default="1,2")
    parser.add_argument("--serve-threads", type=comma_list(int), default="1,2")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workdir", type=Path, help="keep the packages here (default: a temp dir)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--build-into", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve-builds", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build_into:
        build(args.model, args.buckets, args.build_into)
        return {}
    if args.serve_builds:
        builds = {k: Path(v) for k, v in json.loads(args.serve_builds).items()}
        print(json.dumps(serve(args.model, args.buckets, builds, args.rounds)))
        return {}

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-threads-"))
    common = ["--model", args.model, "--buckets", ",".join(map(str, args.buckets))]
    builds = {}
    for threads in args.build_threads:
        directory = workdir / f"built-{threads}"
        builds[f"built on {threads}"] = directory
        if not (directory / INSIDE / f"batch_{args.buckets[-1]}.pt2").exists():
            progress(f"compiling {args.model} packages with {threads} threads ...")
            _child(*common, "--build-into", str(directory), threads=threads)
    serving = [*common, "--rounds", str(args.rounds), "--serve-builds"]
    serving.append(json.dumps({k: str(v) for k, v in builds.items()}))
    rows = []
    for threads in args.serve_threads:
        progress(f"serving with {threads} threads (the JIT compiles each bucket first) ...")
        rows += json.loads(_child(*serving, threads=threads))
    jit = {(r["serve_threads"], r["batch"]): r["median_ms"] for r in rows if r["variant"] == JIT}
    for row in rows:
        row["vs_jit"] = row["median_ms"] / jit[(row["serve_threads"], row["batch"])]
    columns = [
        ("serve threads", "serve_threads"),
        ("batch", "batch"),
        ("variant", "variant"),
        ("median ms", "median_ms"),
        ("vs JIT", "vs_jit"),
        ("weight reorders/call", "reorders_per_call"),
    ]
    return report("threads", args, rows, columns)


if __name__ == "__main__":
    main()
