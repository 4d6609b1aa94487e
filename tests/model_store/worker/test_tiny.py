"""A tiny model of every kind trains on synthetic shapes and then classifies new ones."""

from __future__ import annotations

import pytest
import torch

from model_store import MODELS, create_model, optimize_for_inference
from model_store.demo.synthetic import CLASS_NAMES, make_images
from model_store.demo.tiny import TINY_INPUT_SIZE, save_tiny
from model_store.worker.transforms import images_to_batch

CHANCE = 1 / len(CLASS_NAMES)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_tiny_model_learns_and_generalises(name, tiny_trained, tmp_path):
    model = tiny_trained(name)
    images, labels = make_images(64, seed=1234)  # held out: a seed training never used
    batch = images_to_batch(images, TINY_INPUT_SIZE)
    with torch.no_grad():
        accuracy = (model(batch).argmax(1) == torch.tensor(labels)).float().mean().item()
    assert accuracy >= 0.9, f"{name}: held-out accuracy {accuracy:.2f} (chance {CHANCE:.2f})"

    # The saved checkpoint, reloaded and optimised, gives the same predictions.
    reloaded = create_model(name, checkpoint=save_tiny(model, tmp_path / f"{name}.pt"))
    optimised = optimize_for_inference(reloaded, compile=False)
    assert torch.equal(optimised(batch).argmax(1), model(batch).argmax(1))
