"""A tiny model of any registered kind, trained in seconds on synthetic shapes.

Same code path as the full models (same network, attention, preprocessing and checkpoint
format), smaller depth, width and input: the proof, without downloaded weights, that the
serving path gives real answers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..worker.transforms import images_to_batch
from ..zoo.checkpoint import save_checkpoint
from ..zoo.models import create_model, tiny_arch, tiny_steps
from .synthetic import CLASS_NAMES, make_images

log = logging.getLogger(__name__)

TINY_INPUT_SIZE = 64


def train_tiny(
    name: str,
    *,
    steps: int | None = None,
    batch_size: int = 32,
    train_images: int = 512,
    seed: int = 0,
    arch: dict[str, Any] | None = None,
) -> nn.Module:
    """Train ``name`` in its backbone's tiny configuration (or ``arch``: ``{}`` is the full
    network) on synthetic shapes at 64 px, for ``steps`` (its backbone's ``tiny_steps``);
    returns it in eval mode."""
    torch.manual_seed(seed)
    model = create_model(
        name, num_classes=len(CLASS_NAMES), **(tiny_arch(name) if arch is None else arch)
    )
    images, labels = make_images(train_images, seed=seed)
    inputs = images_to_batch(images, TINY_INPUT_SIZE)
    targets = torch.tensor(labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    steps = tiny_steps(name) if steps is None else steps
    for step in range(steps):
        index = torch.randint(len(targets), (batch_size,), generator=generator)
        loss = F.cross_entropy(model(inputs[index]), targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 20 == 0 or step == steps - 1:
            log.info("train %s step %d/%d loss %.3f", name, step + 1, steps, loss.item())
    return model.eval()


def save_tiny(model: nn.Module, path: str | Path) -> Path:
    """Save with the labels and input size the handler needs to serve it."""
    return save_checkpoint(model, path, labels=list(CLASS_NAMES), input_size=TINY_INPUT_SIZE)
