"""Shared fixtures: tiny trained models are expensive (seconds each), so build them once."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from model_store.demo.tiny import train_tiny
from model_store.torchserve.host import PORT_RANGE_ENV
from model_store.worker.archive_cache import CACHE_ENV, user_cache_dir
from model_store.zoo.resnet import ResNet

# The suite builds the same tiny archives in every clone: built once per machine, copied after
# (``model_store.worker.archive_cache``: keyed by inputs, code and the CPU they are compiled for).
os.environ.setdefault(CACHE_ENV, str(user_cache_dir() / "archives"))

# Parallel workers (pytest-xdist's gw0, gw1...) find free ports in ranges of their own, below
# the kernel's ephemeral ports: two workers never start servers on the same "free" port.
if (worker := os.environ.get("PYTEST_XDIST_WORKER", "")).startswith("gw"):
    low = 10_000 + 5_000 * int(worker.removeprefix("gw"))
    os.environ[PORT_RANGE_ENV] = f"{low}-{low + 4_999}"

_trained: dict[str, ResNet] = {}


@pytest.fixture(scope="session")
def tiny_trained():
    """``tiny_trained(name)`` -> that model, trained once per session on synthetic shapes."""

    def get(name: str) -> ResNet:
        if name not in _trained:
            logging.getLogger(__name__).info("training tiny %s", name)
            _trained[name] = train_tiny(name)
        return _trained[name]

    return get


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_archives(tmp_path_factory, tiny_trained):
    """Archives of tiny trained eca_resnet50 (AOTInductor) and se_resnet50 (OpenVINO)."""
    from .servers import build_tiny_archives

    return build_tiny_archives(tmp_path_factory.mktemp("archives"), tiny_trained)


@pytest.fixture(scope="session")
def torchserve(tmp_path_factory, tiny_archives):
    """A real TorchServe (Java) serving the tiny archives."""
    from perf.stack import start_torchserve

    from .servers import STACK_MODELS

    run_dir = tmp_path_factory.mktemp("torchserve") / "run"
    server = start_torchserve(list(STACK_MODELS), tiny_archives, run_dir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gateway(torchserve):
    """The real gateway (uvicorn) in front of the real TorchServe."""
    from .servers import GatewayThread, gateway_settings

    with GatewayThread(gateway_settings(torchserve)) as running:
        yield running


LONGEST_FIRST = (
    "deploy/test_containers.py",
    "bench/test_capacity_bench.py",
    "bench/test_soak_bench.py",
    "loadtests/test_compare.py",
    "bench/test_scaleout_bench.py",
    "service/test_key_expiry.py",
    "bench/test_models_bench.py",
)
"""Modules that take minutes, mostly waiting (builds, fixed-length loads, key lifetimes): run in
parallel (``-n``, a module per worker) they start first, so the short ones fill the gaps."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.path.as_posix()
        ranks = (i for i, module in enumerate(LONGEST_FIRST) if path.endswith(module))
        return next(ranks, len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the rest keep their order
