"""Ahead-of-time compiled models (AOTInductor): compiled once when the archive is built, loaded
in a second by every worker start, with no compiler and no dynamo at serve time.

One package per batch bucket (the graphs are specialised per batch size, as the JIT path's
``dynamic=False`` ones are), and a manifest keyed by what the generated code depends on: torch's
version, the CPU architecture, its vector ISA and the one inductor compiled for. A package built
for another machine class is refused at load (``AotMismatch``); the worker then compiles just in
time instead.

The packages hold code, not weights: each constant is made again at load from the model's own
weights (``aot_constants``), so oneDNN packs them for the CPU and the thread count that serve,
whatever the compiling process had, and the archive holds the weights once. Where a constant
has no recipe the packages carry their constants, as before (``constants`` in the manifest).
"""

from __future__ import annotations

import json
import logging
import platform
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import aot_constants
from .low_precision import lower
from .precision import FP32
from .runtimes import (
    PACKED_AT_BUILD,
    PACKED_AT_LOAD,
    BuildJob,
    PrebuiltUnusable,
    Runner,
    Runtime,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RECIPES = "constants.json"
"""Per batch size, each package constant's recipe (``aot_constants``)."""
EXTRAS = "constants.pt"
"""The few constant tensors found nowhere in the model's weights, shared by every package."""


class AotMismatch(PrebuiltUnusable):
    """The packages cannot serve here: built for another machine class, or incomplete."""


INSTRUCTION_SETS = re.compile(
    r"(sse|ssse|avx|amx|fma|f16c|bmi|abm|lzcnt|popcnt|movbe|adx|sha|aes|vaes|pclmul|vpclmul|gfni)"
)
"""The CPU flags that name instruction sets: what compiled code may use (the rest of
``/proc/cpuinfo``'s flags describe the machine, a hypervisor, mitigations)."""


def cpu_instruction_sets() -> list[str]:
    """This CPU's instruction-set flags (``/proc/cpuinfo``; empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith(("flags", "Features"))), [])  # fmt: skip
    return sorted(flag for flag in set(flags) if INSTRUCTION_SETS.match(flag))


def cpu_class() -> str:
    """This machine's class as caches name it: ``x86_64-avx2``, ``x86_64-avx512`` (AMD Zen 4)
    or ``x86_64-avx512-amx`` (Sapphire Rapids), the classes these machines alternate between."""
    flags = set(cpu_instruction_sets())
    width = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "base"
    return "-".join([platform.machine(), width, *(["amx"] if "amx_tile" in flags else [])])


PORTABLE, NATIVE = "x86-64-v3", "native"
"""What inductor's own kernels are compiled for: every x86-64-v3 CPU (AVX2 and FMA: both
classes these machines alternate between), or the compiling CPU (``-march=native``: AVX-512,
AMX where it has them). Convolutions and matrix products are oneDNN's either way, and oneDNN
picks the serving CPU's best instructions when the weights are packed at load."""
X86_64_V3 = ("abm", "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "popcnt", "sse",
             "sse2", "sse4_1", "sse4_2", "ssse3")  # fmt: skip
"""The x86-64-v3 level's instruction sets, as ``/proc/cpuinfo`` names them."""
TARGET_OPTIONS = {PORTABLE: {"cpp.march": PORTABLE, "cpp.simdlen": 256}, NATIVE: {}}
"""Inductor options per target: x86-64-v3 code with AVX2 (256-bit) vector kernels."""


def cpu_target(precision: str) -> str:
    """float32 packages are portable (measured: no slower on AMD Zen 4, bench/README.md);
    bf16 and int8 ones are built for the CPU whose matrix units they were chosen for."""
    return PORTABLE if precision == FP32 else NATIVE


def machine_key(target: str = NATIVE) -> dict[str, Any]:
    """What AOTInductor's code compiled for ``target`` needs, read without a compiler (a
    served worker has none): torch, the architecture and the instruction sets: x86-64-v3's, or
    all of the compiling CPU's (inductor compiles with ``-march=native``: Sapphire Rapids and
    AMD Zen 4 both report the capability ``AVX512``, but code built on the first may use AMX,
    which the second lacks; Zen 3 has no AVX-512 at all)."""
    host = cpu_instruction_sets()
    return {
        "torch": torch.__version__,
        "arch": platform.machine(),
        "instruction_sets": sorted(X86_64_V3) if target == PORTABLE else host,
    }


def runs_here(built: dict[str, Any]) -> str | None:
    """Why code compiled on the machine ``built`` describes cannot run on this one (None: it
    can; a CPU with more instruction sets serves it too)."""
    here = machine_key(NATIVE)
    for key in ("torch", "arch"):
        if built.get(key) != here[key]:
            return f"packages built for {key} {built.get(key)}, this machine has {here[key]}"
    if missing := sorted(set(built.get("instruction_sets", ["?"])) - set(here["instruction_sets"])):
        return f"packages built for a CPU with {', '.join(missing)}, which this one lacks"
    return None


def _package(directory: Path, batch_size: int) -> Path:
    return directory / f"batch_{batch_size}.pt2"


def _example(batch_size: int, input_size: int) -> torch.Tensor:
    return torch.zeros(batch_size, 3, input_size, input_size).contiguous(
        memory_format=torch.channels_last
    )


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach() for key, value in model.state_dict().items()}


def compile_package(
    model: nn.Module, batch_size: int, input_size: int, path: Path, options: dict[str, Any]
) -> None:
    """Export ``model`` for one batch size and compile it with inductor ``options`` (freezing:
    prepacked oneDNN weights, as the JIT path does; it only happens with gradients off, so both
    run under ``no_grad``)."""
    example = _example(batch_size, input_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # torch's own pickling of the export spec warns about its own deprecated API
        warnings.filterwarnings("ignore", "`isinstance.*LeafSpec", FutureWarning)
        with torch.no_grad():
            exported = torch.export.export(model, (example,))
            torch._inductor.aoti_compile_and_package(
                exported, package_path=str(path), inductor_configs=options
            )


def compile_packages(
    model: nn.Module,
    batch_sizes: Sequence[int],
    input_size: int,
    directory: Path,
    progress: Callable[[str], None] = log.info,
    weights: nn.Module | None = None,
    target: str = PORTABLE,
) -> dict[str, Any]:
    """Compile ``model`` (already optimised and lowered to its precision, eval, channels_last,
    on CPU) for ``target`` once per batch size into packages whose constants are made at load
    from the float32 ``weights`` model (``model`` itself when None): the recipes in
    ``RECIPES``, the tensors found nowhere in those weights in ``EXTRAS``. If a constant has no
    recipe, every package is compiled again with its constants inside."""
    options = aot_constants.COMPILE_OPTIONS | TARGET_OPTIONS[target]
    directory.mkdir(parents=True, exist_ok=True)
    state = _weights(weights if weights is not None else model)
    seconds: dict[str, float] = {}
    recipes: dict[str, dict[str, aot_constants.Recipe]] = {}
    extras: dict[str, torch.Tensor] = {}
    for batch_size in batch_sizes:
        started = time.perf_counter()
        try:
            with aot_constants.recording() as record:
                path = _package(directory, batch_size)
                compile_package(model, batch_size, input_size, path, options)
            recipes[str(batch_size)] = aot_constants.recipes(record, state, extras)
        except aot_constants.CannotRebuild as exc:
            progress(f"  constants kept in the packages: {exc}")
            return compile_packages_with_constants(
                model, batch_sizes, input_size, directory, progress, target
            )
        seconds[str(batch_size)] = round(time.perf_counter() - started, 1)
        progress(f"  AOTInductor batch {batch_size}: {seconds[str(batch_size)]} s")
    (directory / RECIPES).write_text(json.dumps(recipes) + "\n")
    torch.save(extras, directory / EXTRAS)
    digest = aot_constants.weights_digest(state)
    return _write_manifest(
        directory, batch_sizes, input_size, seconds, PACKED_AT_LOAD, target, weights_sha256=digest
    )


def compile_packages_with_constants(
    model: nn.Module,
    batch_sizes: Sequence[int],
    input_size: int,
    directory: Path,
    progress: Callable[[str], None] = log.info,
    target: str = PORTABLE,
) -> dict[str, Any]:
    """Packages that carry their constants, prepacked by this process (the layouts this CPU
    and thread count get; kernels still ask for the thread count at run time)."""
    options = aot_constants.COMPILE_OPTIONS | TARGET_OPTIONS[target]
    options["aot_inductor.package_constants_in_so"] = True
    seconds = {}
    for batch_size in batch_sizes:
        started = time.perf_counter()
        compile_package(model, batch_size, input_size, _package(directory, batch_size), options)
        seconds[str(batch_size)] = round(time.perf_counter() - started, 1)
        progress(
            f"  AOTInductor batch {batch_size} (constants inside): {seconds[str(batch_size)]} s"
        )
    return _write_manifest(directory, batch_sizes, input_size, seconds, PACKED_AT_BUILD, target)


def _write_manifest(
    directory: Path,
    batch_sizes: Sequence[int],
    input_size: int,
    seconds: dict[str, float],
    weight_packing: str,
    target: str,
    **facts: Any,
) -> dict[str, Any]:
    manifest = {
        "machine": machine_key(target),
        "cpu_target": target,
        "compiled_on": cpu_instruction_sets(),
        "batch_sizes": list(batch_sizes),
        "input_size": input_size,
        "compile_seconds": seconds,
        "weight_packing": weight_packing,
        "compiled_with_threads": torch.get_num_threads(),
        **facts,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


class _PortableIsa(logging.Filter):
    """torch warns at every load of a package compiled for another vector ISA than this
    CPU's best one: for a portable package (AVX2 on an AVX-512 CPU) that is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "mismatch for AOTI_CPU_ISA" not in record.getMessage()


@contextmanager
def _loading(target: str) -> Iterator[None]:
    package_log = logging.getLogger("torch.export.pt2_archive._package")
    quiet = _PortableIsa() if target == PORTABLE else None
    if quiet is not None:
        package_log.addFilter(quiet)
    try:
        yield
    finally:
        if quiet is not None:
            package_log.removeFilter(quiet)


class AotRunner:
    """A loaded package and the constants it runs on (made here, used in place: held)."""

    def __init__(self, package: Any, constants: dict[str, torch.Tensor] | None = None) -> None:
        self.package = package
        self.constants = constants

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.package(images)


def load_packages(
    directory: Path, batch_sizes: Sequence[int], input_size: int, weights: nn.Module
) -> dict[int, Runner]:
    """One loaded runner per batch size, its constants made here from the float32 ``weights``
    model when the packages hold none; ``AotMismatch`` says why these packages cannot
    serve."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise AotMismatch(f"no readable AOT manifest in {directory}: {exc}") from None
    if (why := runs_here(manifest.get("machine", {}))) is not None:
        raise AotMismatch(why)
    if manifest.get("input_size") != input_size:
        raise AotMismatch(f"packages take {manifest.get('input_size')} px, the model {input_size}")
    if missing := sorted(set(batch_sizes) - set(manifest.get("batch_sizes", []))):
        raise AotMismatch(f"no package for batch sizes {missing}")
    with _loading(manifest.get("cpu_target", NATIVE)):
        packages = {
            b: torch._inductor.aoti_load_package(str(_package(directory, b))) for b in batch_sizes
        }
    if manifest.get("weight_packing", PACKED_AT_BUILD) == PACKED_AT_BUILD:
        return {b: AotRunner(package) for b, package in packages.items()}
    try:
        recipes = json.loads((directory / RECIPES).read_text())
        extras = torch.load(directory / EXTRAS, weights_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise AotMismatch(f"the packages' constant recipes are unreadable: {exc}") from None
    state = _weights(weights)
    if manifest.get("weights_sha256") != aot_constants.weights_digest(state):
        raise AotMismatch("the packages were compiled for other weights than the model's")
    runners: dict[int, Runner] = {}
    with torch.no_grad():
        for batch_size, package in packages.items():
            constants = aot_constants.rebuild(recipes[str(batch_size)], state, extras)
            # by the package's own constant names: several constants may share an FQN
            package.loader.update_constant_buffer(constants, False, True, True)
            runners[batch_size] = AotRunner(package, constants)
    return runners


class AotInductor(Runtime):
    """The ``inductor`` runtime: the model lowered to its precision (bf16 wrapper, PT2E int8)
    and compiled by AOTInductor into one package per batch bucket."""

    reported_as = "aot"

    def build(self, job: BuildJob) -> None:
        job.progress(f"  AOTInductor ({job.precision}), one package per bucket")
        lowered = lower(job.model, job.precision, job.calibration, job.batch_sizes[-1])
        target = cpu_target(job.precision)
        job.progress(f"  inductor's kernels for {target}")
        compile_packages(
            lowered, job.batch_sizes, job.input_size, job.directory, job.progress, job.model, target
        )

    def weight_packing(self, directory: Path) -> str:
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
        except (OSError, ValueError):
            return PACKED_AT_BUILD
        return manifest.get("weight_packing", PACKED_AT_BUILD)

    def load(
        self,
        directory: Path,
        batch_sizes: Sequence[int],
        input_size: int,
        precision: str,
        model: nn.Module,
    ) -> dict[int, Runner]:
        return load_packages(directory, batch_sizes, input_size, model)
