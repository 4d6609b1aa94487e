"""The contract room: what both tiers import, importing neither of them, and the rooms' import
arrows as ``docs/ARCHITECTURE.md`` draws them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from contract import answers, errors, protocol

ROOT = Path(__file__).parents[2]
ROOMS = (
    "contract",
    "model_store.zoo",
    "model_store.worker",
    "model_store.torchserve",
    "model_store.demo",
    "model_store",
    "service",
    "perf",
    "bench",
    "loadtests",
)
"""Most specific first: a module belongs to the first room its name starts with."""
ALLOWED = {
    "contract": set(),
    "model_store.zoo": {"contract"},
    "model_store.worker": {"contract", "model_store.zoo", "model_store.demo"},
    "model_store.demo": {"model_store.zoo", "model_store.worker"},
    "model_store.torchserve": {"contract", "model_store.worker"},
    "model_store": {"contract", *(r for r in ROOMS if r.startswith("model_store."))},
    "service": {
        "contract",
        "model_store",
        "model_store.zoo",
        "model_store.worker",
        "model_store.torchserve",
    },
    "perf": {
        "contract",
        "model_store.zoo",
        "model_store.worker",
        "model_store.torchserve",
        "model_store.demo",
    },
    "loadtests": {"contract", "perf", "model_store.zoo", "model_store.torchserve"},
    "bench": set(ROOMS),
}
"""Who may import whom. The worker's ``calibration`` draws synthetic images when a build has no
real ones (``model_store.demo``); the gateway reaches the worker and the launcher only for its
in-process backend and ``--local`` mode (``service.backends.inprocess``, ``service.__main__``),
and ``model_store`` itself for ``model_store.signals``. The harness (``perf``) starts the
gateway as a process, never importing it; the load tests reach the gateway over HTTP only, and
the harness for setting up."""


def room_of(module: str) -> str | None:
    return next((r for r in ROOMS if module == r or module.startswith(f"{r}.")), None)


def import_arrows() -> dict[str, set[str]]:
    """Room -> the rooms its modules import (relative imports resolved)."""
    arrows: dict[str, set[str]] = {}
    top_level = {room.partition(".")[0] for room in ROOMS}
    for path in (p for top in sorted(top_level) for p in (ROOT / top).rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if (room := room_of(module)) is None:
            continue
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    names = [f"{base}.{node.module}" if node.module else base]
                else:
                    names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if (target := room_of(name)) is not None and target != room:
                    arrows.setdefault(room, set()).add(target)
    return arrows


def test_each_room_imports_only_the_rooms_it_may():
    arrows = import_arrows()
    for room, targets in sorted(arrows.items()):
        print(f"{room} -> {', '.join(sorted(targets))}")
    wrong = {room: targets - ALLOWED[room] for room, targets in arrows.items()}
    assert not any(wrong.values()), wrong
    assert "contract" not in arrows  # it imports neither tier


def test_the_contract_imports_neither_torch_nor_pydantic():
    """Both tiers' images can hold it: the gateway's has no torch, the worker's no pydantic."""
    probe = (
        "import sys, contract.answers, contract.errors, contract.images, contract.keys, "
        "contract.protocol\n"
        "print(sorted({'torch', 'numpy', 'pydantic', 'fastapi', 'service', 'model_store'}"
        " & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_image_error_names_a_declared_code():
    """No code is a string literal at the place that raises it: each is a name of
    ``contract.errors``, so it has a status (the gateway answers 502 for an undeclared one)."""
    literal = []
    for path in [*ROOT.glob("contract/*.py"), *ROOT.glob("model_store/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "ImageError"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                literal.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert literal == []
    declared = {v for k, v in vars(errors).items() if k.isupper() and isinstance(v, str)}
    assert declared == set(errors.INPUT_ERROR_STATUS)
    assert set(errors.INPUT_ERROR_STATUS.values()) <= {400, 413, 415, 422}


def test_the_answer_schema_uses_the_protocols_field_names():
    assert protocol.RESULTS_FIELD in answers.WorkerAnswer.__annotations__
    assert protocol.COMPILED_GRAPHS_FIELD in answers.WorkerAnswer.__annotations__
    assert protocol.PROBABILITIES_FIELD in answers.Predictions.__annotations__
