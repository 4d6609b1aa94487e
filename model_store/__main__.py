"""Command line: build archives, serve them with TorchServe, train a tiny demo model.

python -m model_store build [--models all] [--checkpoint [MODEL=]PATH] [--runtime auto]
                           [--precision fp32|bf16|int8|auto] [--calibration DIR]
python -m model_store serve [--models all] [--inference-port 8080 ...] [--drain-seconds 10]
python -m model_store train-tiny --model eca_resnet50 --out tiny.pt
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from contract.lists import comma_separated
from contract.protocol import DEFAULT_RUN_DIR

from .build_jobs import build_all
from .signals import unwind_on_sigterm
from .torchserve.config import CONFIG_TEMPLATE
from .torchserve.host import TorchServeError, free_ports, is_loopback
from .torchserve.launcher import TorchServe
from .torchserve.management_gate import ManagementGate
from .torchserve.readiness import FRONTEND_WARMUP_REQUESTS
from .worker.archive import DEFAULT_ARCHIVE_DIR, ArchiveSpec
from .worker.cpus import available_cpus
from .zoo.fidelity import FidelityGate
from .zoo.optimize import COMPILE_MODES
from .zoo.precision import PRECISION_CHOICES
from .zoo.registry import MODELS, parse_model_names
from .zoo.runtimes import DEFAULT_RUNTIME, RUNTIME_CHOICES

DRAIN_QUIET_S = 0.5
"""Nothing in flight this long: the last answer has left and no request follows it closely
(a batch passes from the frontend's queue to its worker's CPU slot in milliseconds)."""
DRAIN_POLL_S = 0.1


def int_list(value: str) -> tuple[int, ...]:
    try:
        return tuple(comma_separated(value, int))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {value!r}"
        ) from None


def checkpoints_by_model(values: list[str], models: list[str]) -> dict[str, Path]:
    """``MODEL=PATH`` pairs, or one bare ``PATH`` when building exactly one model."""
    result = {}
    for value in values:
        model, sep, path = value.rpartition("=")
        if not sep:
            if len(models) != 1:
                raise SystemExit(
                    f"--checkpoint {value}: several models are built, "
                    "say which one it is for (MODEL=PATH)"
                )
            model = models[0]
        if model not in models:
            raise SystemExit(
                f"--checkpoint {value}: {model!r} is not among the models being built {models}"
            )
        result[model] = Path(path)
    return result


def build(args: argparse.Namespace) -> None:
    """Each model's archive, ``--jobs`` of them at once (see ``build_jobs``)."""
    checkpoints = checkpoints_by_model(args.checkpoint, args.models)
    specs = []
    for model in args.models:
        try:
            spec = ArchiveSpec(
                model=model,
                checkpoint=checkpoints.get(model),
                compile=args.compile,
                compile_mode=args.compile_mode,
                runtime=args.runtime,
                precision=args.precision,
                calibration=args.calibration,
                fidelity=FidelityGate(
                    args.min_top1_agreement, args.min_top5_overlap, args.max_probability_shift
                ),
                aot=args.aot,
                batch_buckets=args.batch_buckets,
                batch_size=args.batch_size,
                max_batch_delay_ms=args.max_batch_delay_ms,
                workers=args.workers,
                fast_decode=args.fast_decode,
            )
        except ValueError as exc:  # settings the worker would refuse at load
            raise SystemExit(f"error: {model}: {exc}") from None
        specs.append(spec)
    build_all(specs, args.out, args.jobs)


def serve(args: argparse.Namespace) -> None:
    """TorchServe until a signal. On a host other hosts reach (``--host 0.0.0.0`` in a
    container), its management API stays on loopback and the management port is a read-only
    ``ManagementGate`` in front of it."""
    gated = not is_loopback(args.host)
    server = TorchServe(
        models=args.models,
        archive_dir=args.archives,
        run_dir=args.run_dir,
        host=args.host,
        inference_port=args.inference_port,
        management_port=free_ports(1)[0] if gated else args.management_port,
        metrics_port=args.metrics_port,
        grpc_ports=args.grpc_ports,
        config_template=args.config,
        frontend_warmup=FRONTEND_WARMUP_REQUESTS,
    )
    unwind_on_sigterm()
    gate = None
    try:
        if gated:
            gate = ManagementGate((args.host, args.management_port), server.management_url)
            gate.start()
        server.start()
        server.wait_ready(progress=lambda msg: print(msg, flush=True))
        print(
            f"TorchServe ready: inference {server.inference_url}, "
            f"management {server.management_url}"
            + (f" (read-only on {args.host}:{args.management_port})" if gate else "")
            + f", metrics {server.metrics_url}/metrics; "
            f"token keys in {server.key_file}; log {server.log_file}",
            flush=True,
        )
        print("Ctrl-C stops it.", flush=True)
        server.process.wait()
        raise TorchServeError(
            f"TorchServe exited with code {server.process.returncode}; "
            f"log tail:\n{server.log_tail()}"
        )
    except KeyboardInterrupt:
        print("\nstopping TorchServe ...", flush=True)
    except TorchServeError as exc:
        raise SystemExit(f"error: {exc}") from None
    finally:
        if server.models_ready and server.process.poll() is None:  # traffic may be running
            drain(server, args.drain_seconds)
        server.stop()
        if gate is not None:
            gate.stop()


def drain(server: TorchServe, seconds: float) -> None:
    """TorchServe's frontend resets in-flight requests on SIGTERM (measured), so it is stopped
    only once nothing has been in flight (``TorchServe.in_flight``) for ``DRAIN_QUIET_S``, or
    after ``seconds`` at most. A second signal cuts the wait short."""
    if seconds <= 0:
        return
    print(f"draining (at most {seconds:g} s) before stopping TorchServe", flush=True)
    started = time.monotonic()
    idle_since: float | None = None
    try:
        while (now := time.monotonic()) - started < seconds:
            if server.in_flight():
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= DRAIN_QUIET_S:
                print(f"drained in {now - started:.1f} s", flush=True)
                return
            time.sleep(DRAIN_POLL_S)
        print(f"drain cut short after {seconds:g} s with batches still in flight", flush=True)
    except (KeyboardInterrupt, SystemExit):
        print("drain cut short", flush=True)


def train_tiny_command(args: argparse.Namespace) -> None:
    from .demo.tiny import save_tiny, train_tiny

    model = train_tiny(args.model, steps=args.steps)
    print(f"saved {save_tiny(model, args.out)}")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    parser = argparse.ArgumentParser(
        prog="python -m model_store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("build", help="write one .mar per model")
    p.add_argument(
        "--models", type=parse_model_names, default=list(MODELS), help="comma list or 'all'"
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="[MODEL=]PATH",
        help="weights to package (any supported layout); "
        "default: seeded random init, marked UNTRAINED",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="torch.compile in the worker",
    )
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default=ArchiveSpec.compile_mode)
    p.add_argument(
        "--runtime",
        choices=RUNTIME_CHOICES,
        default=DEFAULT_RUNTIME,
        help="what serves on CPU: inductor (torch.compile), openvino (converted here), or auto "
        "(both built and measured here, the faster kept; the numbers go in the archive)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default=ArchiveSpec.precision,
        help="what the prebuilt model computes in: fp32 (exact), bf16 or int8 (this CPU's matrix "
        "units; built only if the fidelity gate passes), or auto (every one measured, the "
        "fastest that passes kept)",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        help="a folder of your own images to calibrate int8 on and check bf16/int8 against "
        "(every 4th held out); default: synthetic shapes, which measure nothing of real data",
    )
    gate = FidelityGate()
    for name, help_text in (
        ("min_top1_agreement", "share of held-out images whose top-1 must equal fp32's"),
        ("min_top5_overlap", "mean share of fp32's top-5 a low precision must keep"),
        ("max_probability_shift", "largest change of any class probability allowed"),
    ):
        p.add_argument(
            f"--{name.replace('_', '-')}", type=float, default=getattr(gate, name), help=help_text
        )
    p.add_argument(
        "--aot",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compile ahead of time here (AOTInductor, one package per bucket): workers start "
        "in seconds; --no-aot compiles in every worker at load instead",
    )
    p.add_argument(
        "--batch-buckets",
        type=int_list,
        default=ArchiveSpec.batch_buckets,
        help="padded batch sizes, warmed up at load",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=ArchiveSpec.batch_size,
        help="TorchServe batchSize: keep 1 behind the gateway (it batches); more only for "
        "clients that call TorchServe directly with single images",
    )
    p.add_argument(
        "--max-batch-delay-ms",
        type=int,
        default=ArchiveSpec.max_batch_delay_ms,
        help="TorchServe maxBatchDelay",
    )
    p.add_argument("--workers", type=int, default=ArchiveSpec.workers, help="workers per model")
    p.add_argument(
        "--jobs",
        type=int,
        default=available_cpus(),
        help="archives built at once, each in a process of its own (default: the CPUs this "
        "process may use; builds that measure candidates, --runtime/--precision auto, run one "
        "at a time)",
    )
    p.add_argument(
        "--fast-decode",
        action="store_true",
        help="decode JPEGs at a reduced DCT scale: faster, but scores move slightly "
        "(see bench/README.md); off by default so served scores equal offline ones",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_ARCHIVE_DIR)
    p.set_defaults(func=build)

    p = commands.add_parser("serve", help="run TorchServe on the archives until Ctrl-C")
    p.add_argument("--models", type=parse_model_names, default=list(MODELS))
    p.add_argument("--archives", type=Path, default=DEFAULT_ARCHIVE_DIR)
    p.add_argument(
        "--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="config, key file and logs"
    )
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 in a container")
    p.add_argument("--inference-port", type=int, default=8080)
    p.add_argument("--management-port", type=int, default=8081)
    p.add_argument("--metrics-port", type=int, default=8082)
    p.add_argument(
        "--grpc-ports",
        type=int_list,
        default=(7070, 7071),
        help="TorchServe always binds gRPC inference,management ports (unused here)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=CONFIG_TEMPLATE,
        help="config.properties template (addresses are rewritten to --host and the ports)",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=0.0,
        help="on SIGTERM/Ctrl-C, let running and queued batches finish first, this long at most",
    )
    p.set_defaults(func=serve)

    p = commands.add_parser(
        "train-tiny", help="train a tiny model on synthetic shapes (demo / tests)"
    )
    p.add_argument("--model", type=lambda v: parse_model_names(v)[0], default="eca_resnet50")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=train_tiny_command)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
