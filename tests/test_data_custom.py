"""Custom data: a folder of class folders, train/ and test/ folders, or a split JSON in CoOp's format."""
import json
import os

import pytest

from aple_jax.data import SplitFormatError, build_dataset
from aple_jax.data.fake_trees import jpeg_bytes


def _images(root, rel_paths):
    for rel in rel_paths:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(jpeg_bytes())


def test_folder_of_class_folders(tmp_path):
    root = str(tmp_path)
    _images(root, [f"{c}/{i}.jpg" for c in ("golden_retriever", "cat", "zebra") for i in range(10)])
    data = build_dataset("custom", root, shots=2, seed=1, template="a photo of my {}.")
    assert data.classnames == ["cat", "golden retriever", "zebra"] and data.template == "a photo of my {}."
    assert len(data.train) == 6 and len(data.test) == 9  # 50/20/30 per class, then 2 shots
    again = build_dataset("custom", root, shots=0, seed=7)
    first = build_dataset("custom", root, shots=0, seed=1)
    assert again.test.records == first.test.records  # the generated split does not depend on the run seed
    assert os.path.isfile(os.path.join(root, "split_fewshot", "shot_2-seed_1.json"))


def test_train_and_test_folders(tmp_path):
    root = str(tmp_path)
    _images(root, [f"{s}/{c}/{i}.png" for s in ("train", "test") for c in ("a", "b") for i in range(3)])
    data = build_dataset("custom", root, shots=0, seed=1)
    assert (len(data.train), len(data.val), len(data.test)) == (6, 6, 6)
    assert data.train[0]["image"].shape == (10, 12, 3)
    _images(root, ["test/c/0.png"])
    with pytest.raises(SplitFormatError, match="absent from train"):
        build_dataset("custom", root, shots=0, seed=1)


def test_user_split_json(tmp_path):
    root = str(tmp_path / "imgs")
    split = {"train": [["x/1.jpg", 0, "x"], ["y/1.jpg", 1, "y"]], "val": [["x/2.jpg", 0, "x"]],
             "test": [["y/2.jpg", 1, "y"]]}
    _images(root, [item[0] for part in split.values() for item in part])
    split_file = str(tmp_path / "split.json")
    with open(split_file, "w") as f:
        json.dump(split, f)
    data = build_dataset("custom", root, shots=0, seed=1, split_file=split_file)
    assert data.classnames == ["x", "y"] and [r.key for r in data.test.records] == ["y/2.jpg"]


def test_too_few_images_for_a_generated_split(tmp_path):
    _images(str(tmp_path), ["a/1.jpg", "a/2.jpg", "b/1.jpg", "b/2.jpg", "b/3.jpg", "b/4.jpg"])
    with pytest.raises(SplitFormatError, match="'a'.*at least 4"):
        build_dataset("custom", str(tmp_path), shots=0, seed=1)
