"""Shared fixtures: tiny trained models are expensive (seconds each), so build them once."""

from __future__ import annotations

import logging

import pytest
import torch

from model_store.resnet import ResNet
from model_store.tiny import train_tiny

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
