"""Bad input fails early with an error naming the path or value and pointing to docs/data.md."""
import json
import os

import pytest

from aple_jax.data import BadImageError, MissingDataError, SplitFormatError, UnknownDatasetError, build_dataset
from aple_jax.data.fake_trees import write_coop_tree

DOCS = "docs/data.md"


@pytest.fixture
def pets_root(tmp_path):
    write_coop_tree(str(tmp_path), "OxfordPets", num_classes=4, per_class=(3, 2, 2))
    return str(tmp_path)


def test_missing_dataset_directory(tmp_path):
    with pytest.raises(MissingDataError) as err:
        build_dataset("Food101", str(tmp_path), shots=1, seed=1)
    msg = str(err.value)
    assert os.path.join(str(tmp_path), "food-101") in msg and "split_zhou_Food101.json" in msg and DOCS in msg


def test_root_is_required():
    with pytest.raises(MissingDataError, match="root="):
        build_dataset("dtd", None, shots=1, seed=1)


def test_missing_split_file(pets_root):
    path = os.path.join(pets_root, "oxford_pets", "split_zhou_OxfordPets.json")
    os.remove(path)
    with pytest.raises(MissingDataError) as err:
        build_dataset("OxfordPets", pets_root, shots=1, seed=1)
    assert path in str(err.value) and DOCS in str(err.value)


def test_listed_image_absent(pets_root):
    missing = os.path.join(pets_root, "oxford_pets", "images", "c002", "test_001.jpg")
    os.remove(missing)
    with pytest.raises(MissingDataError) as err:
        build_dataset("OxfordPets", pets_root, shots=1, seed=1)
    assert missing in str(err.value) and "1 image(s)" in str(err.value) and DOCS in str(err.value)


def test_unreadable_image(pets_root):
    bad = os.path.join(pets_root, "oxford_pets", "images", "c001", "test_000.jpg")
    with open(bad, "wb") as f:
        f.write(b"not a jpeg")
    pets = build_dataset("OxfordPets", pets_root, shots=1, seed=1)
    index = next(i for i, r in enumerate(pets.test.records) if r.key == "c001/test_000.jpg")
    with pytest.raises(BadImageError) as err:
        pets.test[index]
    assert bad in str(err.value) and DOCS in str(err.value)


def test_unknown_dataset_name():
    with pytest.raises(UnknownDatasetError, match="'imagenet_z'.*OxfordPets.*docs/data.md"):
        build_dataset("imagenet_z", "/nowhere", shots=1, seed=1)
    with pytest.raises(UnknownDatasetError, match="FGVC-Aircraft"):
        build_dataset("tfds:fgvc_aircraft", None, shots=1, seed=1)


def test_malformed_split_file(pets_root):
    path = os.path.join(pets_root, "oxford_pets", "split_zhou_OxfordPets.json")
    with open(path, "w") as f:
        json.dump({"train": [["a.jpg", 0]], "val": [], "test": []}, f)
    with pytest.raises(SplitFormatError, match=r"train\[0\]"):
        build_dataset("OxfordPets", pets_root, shots=1, seed=1)
    with open(path, "w") as f:
        json.dump({"train": []}, f)
    with pytest.raises(SplitFormatError, match="missing \\['val', 'test'\\]"):
        build_dataset("OxfordPets", pets_root, shots=1, seed=1)


def test_imagenet_without_classnames(tmp_path):
    write_coop_tree(str(tmp_path), "ImageNetSketch", num_classes=3)
    os.remove(os.path.join(str(tmp_path), "imagenet-sketch", "classnames.txt"))
    with pytest.raises(MissingDataError, match="classnames.txt"):
        build_dataset("ImageNetSketch", str(tmp_path), shots=0, seed=1)


def test_bad_subsample_fails_before_reading(tmp_path):
    with pytest.raises(ValueError, match="subsample"):
        build_dataset("OxfordPets", str(tmp_path), shots=1, seed=1, subsample="novel")


def test_synthetic_options_are_ignored_elsewhere_and_others_rejected(pets_root):
    pets = build_dataset("OxfordPets", pets_root, shots=1, seed=1, num_classes=10, image_size=32)
    assert pets.num_classes == 4
    with pytest.raises(TypeError, match="split_file"):
        build_dataset("OxfordPets", pets_root, shots=1, seed=1, split_file="x.json")
