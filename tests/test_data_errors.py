"""Bad input fails early with an error naming the path or value and pointing to docs/data.md."""
import json
import os
import re

import pytest

from aple_jax.data import (BadImageError, DuplicateEntryWarning, MissingDataError, SplitFormatError, SplitLeakError,
                           UnknownDatasetError, build_dataset)
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


@pytest.mark.parametrize("content,problem", [(b"not a jpeg", "cannot identify image file"),
                                             (b"", "the file is empty")], ids=["garbage", "empty"])
def test_an_undecodable_evaluation_image_is_refused_when_the_dataset_is_built(pets_root, content, problem):
    bad = os.path.join(pets_root, "oxford_pets", "images", "c001", "test_000.jpg")
    with open(bad, "wb") as f:
        f.write(content)
    with pytest.raises(BadImageError, match=rf"1 image\(s\) in the OxfordPets test split cannot be decoded: "
                                            rf"{re.escape(bad)}: {problem}") as err:
        build_dataset("OxfordPets", pets_root, shots=1, seed=1)
    assert DOCS in str(err.value)
    assert build_dataset("OxfordPets", pets_root, shots=1, seed=1, subsample="new").num_classes == 2   # c001 is base


def test_an_unreadable_training_image_is_named_when_it_is_read(pets_root):
    bad = os.path.join(pets_root, "oxford_pets", "images", "c001", "train_000.jpg")
    with open(bad, "wb") as f:
        f.write(b"not a jpeg")
    with pytest.raises(BadImageError, match="1 image\\(s\\) in the OxfordPets 3-shot training set"):
        build_dataset("OxfordPets", pets_root, shots=3, seed=1)
    pets = build_dataset("OxfordPets", pets_root, shots=0, seed=1)   # the full training set is read when used
    index = next(i for i, r in enumerate(pets.train.records) if r.key == "c001/train_000.jpg")
    with pytest.raises(BadImageError) as err:
        pets.train[index]
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


# ------------------------------------------------------------------------------- leaks, repeats and labels

def _edit_split(root, edit):
    """Rewrites the OxfordPets split file with `edit(split)` applied; returns its path."""
    path = os.path.join(root, "oxford_pets", "split_zhou_OxfordPets.json")
    with open(path) as f:
        split = json.load(f)
    edit(split)
    with open(path, "w") as f:
        json.dump(split, f)
    return path


@pytest.mark.parametrize("split", ["val", "test"])
def test_a_training_image_in_an_evaluation_split_is_refused_by_name(pets_root, split):
    leaked = {}

    def leak(s):
        key, label, name = s["train"][2]
        leaked["key"] = key
        s[split].append([f"./{os.path.dirname(key)}/../{key}", label, name])   # the same file, spelled otherwise

    _edit_split(pets_root, leak)
    with pytest.raises(SplitLeakError, match=rf"{leaked['key']} is in both the train and the {split} split"):
        build_dataset("OxfordPets", pets_root, shots=1, seed=1)


def test_repeated_entries_are_kept_once_with_a_warning(pets_root):
    pets = build_dataset("OxfordPets", pets_root, shots=0, seed=1)
    _edit_split(pets_root, lambda s: s["test"].extend(s["test"][:3]))
    with pytest.warns(DuplicateEntryWarning, match=r"test lists 3 image\(s\) more than once \(e\.g\. c000/test_000"):
        again = build_dataset("OxfordPets", pets_root, shots=0, seed=1)
    assert again.test.records == pets.test.records


def test_a_repeat_with_another_class_is_refused(pets_root):
    def contradict(s):
        key, label, _ = s["train"][0]
        other = next(e for e in s["train"] if e[1] != label)
        s["train"].append([key, other[1], other[2]])

    _edit_split(pets_root, contradict)
    with pytest.raises(SplitFormatError, match=r"train lists c000/train_000\.jpg twice, as class 'class_0' "
                                               r"\(label 0\) and as class 'class_1' \(label 1\)"):
        build_dataset("OxfordPets", pets_root, shots=1, seed=1)


@pytest.mark.parametrize("edit,needle", [
    (lambda s: s["test"].__setitem__(0, [s["test"][0][0], -1, "class_000"]),
     r"test entry c000/test_000\.jpg \(class 'class_000'\) has label -1"),
    (lambda s: s["test"].append(["c009/test_000.jpg", 4, "class_009"]),
     r"class 'class_009' \(label 4\) has no training images, but test lists c009/test_000\.jpg"),
    (lambda s: s.update(train=[e for e in s["train"] if e[1] != 1], val=[e for e in s["val"] if e[1] != 1],
                        test=[e for e in s["test"] if e[1] != 1]),
     r"labels must be 0\.\.2 without gaps \(one per class\), but no image has label 1; the next class is 'class_2' "
     r"\(label 2, e\.g\. train entry c002/train_000\.jpg\)"),
], ids=["negative", "no_training_images", "gap"])
def test_label_errors_name_the_class_and_the_file(pets_root, edit, needle):
    path = _edit_split(pets_root, edit)
    with pytest.raises(SplitFormatError, match=rf"OxfordPets \({re.escape(os.path.dirname(path))}\): {needle}"):
        build_dataset("OxfordPets", pets_root, shots=1, seed=1)


def test_evaluation_only_datasets_serve_one_list_as_every_split(tmp_path):
    write_coop_tree(str(tmp_path), "ImageNetSketch", num_classes=3)
    sketch = build_dataset("ImageNetSketch", str(tmp_path), shots=0, seed=1)
    assert sketch.test.records == sketch.train.records and len(sketch.test) > 0
