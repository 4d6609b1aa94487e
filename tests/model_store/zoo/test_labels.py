from __future__ import annotations

import json

import pytest

from model_store import load_labels


def test_imagenet_labels_ship_with_the_repo():
    labels = load_labels()
    assert len(labels) == 1000
    assert labels[0] == "tench" and labels[1] == "goldfish" and labels[999] == "toilet tissue"


def test_generic_names_for_custom_class_count():
    assert load_labels(num_classes=3) == ["class_0", "class_1", "class_2"]


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        ("labels.json", json.dumps(["cat", "dog"])),
        ("labels.json", json.dumps({"1": "dog", "0": "cat"})),
        ("labels.txt", "cat\ndog\n\n"),
    ],
)
def test_custom_label_files(tmp_path, filename, content):
    path = tmp_path / filename
    path.write_text(content)
    assert load_labels(path, num_classes=2) == ["cat", "dog"]


def test_label_count_must_match_classes(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog\n")
    with pytest.raises(ValueError, match="holds 2 labels but the model has 3 classes"):
        load_labels(path, num_classes=3)


def test_json_object_needs_every_index(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"0": "cat", "2": "dog"}))
    with pytest.raises(ValueError, match=r"keys 0\.\.1"):
        load_labels(path, num_classes=2)
