"""Class labels: ImageNet-1k names shipped in the repo, or a user's own file."""

from __future__ import annotations

import json
from pathlib import Path

IMAGENET_LABELS = Path(__file__).parent / "labels" / "imagenet1k.json"
"""First WordNet lemma of each ImageNet-1k synset, in class-index order (generated once from
timm's synset tables; nothing is downloaded at run time)."""


def load_labels(path: str | Path | None = None, num_classes: int = 1000) -> list[str]:
    """Labels for ``num_classes`` classes.

    ``path`` may be a JSON list, a JSON object mapping index to name, or a text file with one
    name per line. Without a path: ImageNet names for 1000 classes, ``class_<i>`` otherwise.
    """
    if path is None:
        if num_classes == 1000:
            path = IMAGENET_LABELS
        else:
            return [f"class_{i}" for i in range(num_classes)]
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if isinstance(data, dict):
            try:
                data = [data[str(i)] for i in range(len(data))]
            except KeyError as exc:
                raise ValueError(
                    f"{path}: label object must have keys 0..{len(data) - 1}, missing {exc}"
                ) from None
        labels = [str(label) for label in data]
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if len(labels) != num_classes:
        raise ValueError(
            f"{path} holds {len(labels)} labels but the model has {num_classes} classes"
        )
    return labels
