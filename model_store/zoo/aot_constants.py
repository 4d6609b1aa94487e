"""AOTInductor packages without their weights: what each constant of a package is made from,
recorded when it is compiled, and those constants made again by the process that loads it.

With inductor's CPU freezing, a package's convolution and linear weights are prepacked into
oneDNN's blocked layouts, and oneDNN picks a layout for the CPU and the thread count of the
process that packs: at batch 1 a 1x1 convolution's output channels are blocked by 48 on one
thread and by 64 on two (AVX-512), so a package compiled in one process and run in another
reordered those weights again on every call (2x slower at batch 1, bench/README.md), and every
bucket's package carried its own copy of the weights.

So packages are compiled without their constants (``package_constants_in_so=False``) while
every prepack call inductor's constant folding makes is recorded, and each constant gets a
recipe: a tensor of the model's state (viewed, strided as the package expects it), a prepack
call on one, or, for the few constants that are neither, a tensor kept beside the packages. The
loading process runs the recipes on the weights it has loaded anyway: oneDNN packs them for the
CPU and the threads that will run them, and the archive holds the weights once.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import torch
from torch._inductor import codecache, constant_folding

PREPACK_OPS = {
    "mkldnn::_reorder_convolution_weight",
    "mkldnn::_reorder_linear_weight",
    "onednn::qconv_prepack",
    "onednn::qlinear_prepack",
}
"""The calls whose results a package holds in oneDNN's layouts: made again at load."""
COMPILE_OPTIONS = {
    "freezing": True,
    "aot_inductor.package_constants_in_so": False,
    "cpp.dynamic_threads": True,
}
"""Inductor options of a package whose constants are made at load: frozen (prepacked weights,
fused convolutions), no constants inside, and generated kernels that ask OpenMP for the thread
count at run time instead of the compiling process's."""

Recipe = dict[str, Any]


class CannotRebuild(RuntimeError):
    """A package constant that no recipe explains: the package must carry its constants."""


def _op_name(target: Any) -> str | None:
    """``namespace::name`` of a call's target (an op or an op overload), None for others."""
    schema = getattr(target, "_schema", None) or getattr(
        getattr(target, "default", None), "_schema", None
    )
    return schema.name if schema is not None else None


@dataclass
class Recording:
    """What one compilation made: each prepack call (its arguments and result) and the
    constants of the graph handed to the AOT compiler, by the package's own names for them
    (not their FQNs, which several constants of a quantized graph share: ``x_scale``)."""

    calls: list[tuple[str, tuple[Any, ...], torch.Tensor]] = field(default_factory=list)
    constants: dict[str, torch.Tensor] = field(default_factory=dict)


@contextmanager
def recording() -> Iterator[Recording]:
    """Record what inductor compiles in this process meanwhile (two of its internal hooks: the
    constant folder's node evaluation and the AOT compiler's entry; torch is pinned)."""
    record = Recording()
    run_node = constant_folding.ConstantFolder.run_node
    compile_graph = codecache.AotCodeCompiler.compile.__func__

    def folding(folder: Any, node: torch.fx.Node) -> Any:
        name = _op_name(node.target) if node.op == "call_function" else None
        args = folder.fetch_args_kwargs_from_env(node)[0] if name in PREPACK_OPS else None
        result = run_node(folder, node)
        if args is not None and isinstance(result, torch.Tensor):
            record.calls.append((name, tuple(args), result))
        return result

    def compiling(cls: Any, graph: Any, *args: Any, **kwargs: Any) -> Any:
        for name, value in graph.constants.items():
            record.constants[name] = value
        return compile_graph(cls, graph, *args, **kwargs)

    with (
        mock.patch.object(constant_folding.ConstantFolder, "run_node", folding),
        mock.patch.object(codecache.AotCodeCompiler, "compile", classmethod(compiling)),
    ):
        yield record


class _StateIndex:
    """The float32 model's tensors by size, to find where a constant's values come from: the
    same tensor, or its cast to a lower precision (a bf16 model's weights)."""

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        self.state = state
        self.by_size: dict[int, list[str]] = defaultdict(list)
        for key, value in state.items():
            self.by_size[value.numel()].append(key)

    def find(self, tensor: torch.Tensor) -> Recipe | None:
        """A state entry with ``tensor``'s values, read in its shape (or transposed, 2-D) and
        dtype."""
        shape = list(tensor.shape)
        for key in self.by_size.get(tensor.numel(), []):
            value = self.state[key]
            if value.dtype != tensor.dtype:
                if not (value.is_floating_point() and tensor.is_floating_point()):
                    continue
                value = value.to(tensor.dtype)
            recipe = {"key": key, "shape": shape, "dtype": str(tensor.dtype).removeprefix("torch.")}
            if torch.equal(value.reshape(shape), tensor):
                return recipe | {"transposed": False}
            if tensor.dim() == 2 and torch.equal(value.reshape(shape[::-1]).t(), tensor):
                return recipe | {"transposed": True}
        return None


def _digest(tensor: torch.Tensor) -> str:
    data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(data + str((tensor.dtype, list(tensor.shape))).encode()).hexdigest()


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """One digest of every tensor of ``state``: the packages are compiled for these weights
    (inductor writes a few scalar weights into the code itself, ECA's kernel taps), so they
    load only beside the same ones."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(_digest(state[key]).encode())
    return digest.hexdigest()


def recipes(
    record: Recording, state: Mapping[str, torch.Tensor], extras: dict[str, torch.Tensor]
) -> dict[str, Recipe]:
    """Each constant of the compiled package (by the name the package asks for) as a recipe
    over ``state``; tensors found nowhere in it are added to ``extras`` (by content digest, so
    buckets share them). ``CannotRebuild`` when a prepacked constant has no recorded call."""
    index = _StateIndex(state)
    made_by = {id(result): (op, args) for op, args, result in record.calls}

    def tensor(value: torch.Tensor) -> Recipe:
        if (found := index.find(value)) is not None:
            return found
        digest = _digest(value)
        extras.setdefault(digest, value.detach().clone())
        dtype = str(value.dtype).removeprefix("torch.")
        return {"extra": digest, "shape": list(value.shape), "dtype": dtype, "transposed": False}

    def argument(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return {"tensor": tensor(value)}
        if isinstance(value, torch.Size | tuple | list):
            return [argument(v) for v in value]
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise CannotRebuild(f"a prepack argument of type {type(value).__name__}")

    result = {}
    for name, value in record.constants.items():
        if id(value) in made_by:
            op, args = made_by[id(value)]
            result[name] = {"op": op, "args": [argument(a) for a in args]}
        elif value.is_mkldnn:
            raise CannotRebuild(f"{name} is prepacked by a call that was not recorded")
        else:
            result[name] = {"tensor": tensor(value), "stride": list(value.stride())}
    return result


def rebuild(
    recipes_by_name: Mapping[str, Recipe],
    state: Mapping[str, torch.Tensor],
    extras: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The constants of one package, made here: oneDNN prepacks for this process's CPU and
    thread count. Plain ones come strided as the package expects them."""

    def tensor(recipe: Recipe) -> torch.Tensor:
        source = extras[recipe["extra"]] if "extra" in recipe else state[recipe["key"]]
        source, shape = source.to(getattr(torch, recipe["dtype"])), recipe["shape"]
        return source.reshape(shape[::-1]).t() if recipe["transposed"] else source.reshape(shape)

    def argument(value: Any) -> Any:
        if isinstance(value, dict):
            return tensor(value["tensor"])
        if isinstance(value, list):
            return [argument(v) for v in value]
        return value

    constants = {}
    for name, recipe in recipes_by_name.items():
        if "op" in recipe:
            namespace, op = recipe["op"].split("::")
            call = getattr(getattr(torch.ops, namespace), op)
            constants[name] = call(*(argument(a) for a in recipe["args"]))
        else:
            value = tensor(recipe["tensor"])
            strided = torch.empty_strided(value.shape, recipe["stride"], dtype=value.dtype)
            constants[name] = strided.copy_(value)
    return constants
