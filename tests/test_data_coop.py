"""CoOp-layout sources: counts, labels, class names, base/new sizes, relabelling, few-shot caches."""
import json
import os
import pickle
import re
import shutil
import sys
import types

import numpy as np
import pytest

from aple_jax.data import build_dataset
from aple_jax.data.coop_folders import LAYOUTS
from aple_jax.data.fake_trees import NUM_CLASSES, write_coop_tree

SMALL = {"ImageNet": 10, "ImageNetV2": 10, "ImageNetSketch": 10}  # fewer files; A/R keep their 200 of 1000
BASE_NEW = {"ImageNet": (5, 5), "Caltech101": (50, 50), "OxfordPets": (19, 18), "StanfordCars": (98, 98),
            "OxfordFlowers": (51, 51), "Food101": (51, 50), "FGVCAircraft": (50, 50), "SUN397": (199, 198),
            "DescribableTextures": (24, 23), "EuroSAT": (5, 5), "UCF101": (51, 50), "ImageNetV2": (5, 5),
            "ImageNetSketch": (5, 5), "ImageNetA": (100, 100), "ImageNetR": (100, 100)}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("DATA"))
    for name in LAYOUTS:
        write_coop_tree(root, name, SMALL.get(name), per_class=(3, 2, 1))
    return root


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_counts_labels_and_base_new(data_root, name):
    n = SMALL.get(name, NUM_CLASSES[name])
    full = build_dataset(name, data_root, shots=0, seed=1)
    assert full.name == name and full.num_classes == n
    test_only = LAYOUTS[name].test_only
    per_train = 1 if test_only else 3
    assert len(full.train) == n * per_train and len(full.test) == n
    assert sorted(set(full.test.labels.tolist())) == list(range(n))
    base = build_dataset(name, data_root, shots=0, seed=1, subsample="base")
    new = build_dataset(name, data_root, shots=0, seed=1, subsample="new")
    assert (base.num_classes, new.num_classes) == BASE_NEW[name]
    for part, offset in ((base, 0), (new, base.num_classes)):
        assert part.classnames == full.classnames[offset:offset + part.num_classes]
        for src in (part.train, part.val, part.test):
            assert sorted(set(src.labels.tolist())) == list(range(part.num_classes))
    # relabelling keeps each record's class name consistent with the new label
    for rec in new.test.records:
        assert new.classnames[rec.label] == rec.classname.replace("_", " ")


def test_records_load_images(data_root):
    pets = build_dataset("oxford_pets", data_root, shots=2, seed=1)
    example = pets.train[0]
    assert example["image"].dtype == np.uint8 and example["image"].shape == (10, 12, 3)
    assert isinstance(example["label"], int)
    assert pets.template == "a photo of a {}, a type of pet."
    assert pets.classnames[3] == "class 3"  # "_" -> " " for prompts


def test_class_name_conventions(data_root):
    assert build_dataset("EuroSAT", data_root, shots=0, seed=1).classnames[0] == "Class 0 Land"
    assert build_dataset("SUN397", data_root, shots=0, seed=1).classnames[7] == "indoor scene 7"
    imagenet_a = build_dataset("imagenet_a", data_root, shots=0, seed=1)
    assert imagenet_a.num_classes == 200 and imagenet_a.classnames[1] == "imagenet class 5"
    aircraft = build_dataset("fgvc_aircraft", data_root, shots=0, seed=1)
    assert aircraft.classnames[:2] == ["700-0", "701-1"] and aircraft.template.endswith("aircraft.")


def test_fewshot_counts_and_val_shots(data_root):
    pets = build_dataset("OxfordPets", data_root, shots=2, seed=1)
    assert len(pets.train) == 37 * 2 and len(pets.val) == 37 * 2 and len(pets.test) == 37
    imagenet = build_dataset("ImageNet", data_root, shots=1, seed=1)
    assert len(imagenet.train) == 10 and imagenet.val.records == imagenet.test.records  # val = test (CoOp)


def test_fewshot_cache_is_relative_and_survives_a_move(tmp_path):
    root = str(tmp_path / "DATA")
    write_coop_tree(root, "DescribableTextures", per_class=(4, 2, 1))
    first = build_dataset("dtd", root, shots=2, seed=3)
    cache = os.path.join(root, "dtd", "split_fewshot", "shot_2-seed_3.json")
    with open(cache) as f:
        data = json.load(f)
    assert all(not os.path.isabs(key) for key, _, _ in data["train"] + data["val"])
    moved = str(tmp_path / "elsewhere")
    shutil.move(root, moved)
    second = build_dataset("dtd", moved, shots=2, seed=3)
    assert second.train.records == first.train.records
    assert second.train.loader.root.startswith(moved)


def test_cache_dir_is_used_and_read_back(tmp_path):
    root = str(tmp_path / "DATA")
    write_coop_tree(root, "EuroSAT", per_class=(5, 2, 1))
    cache_dir = str(tmp_path / "cache")
    a = build_dataset("eurosat", root, shots=2, seed=1, cache_dir=cache_dir)
    path = os.path.join(cache_dir, "EuroSAT", "shot_2-seed_1.json")
    assert os.path.isfile(path)
    with open(path) as f:
        data = json.load(f)
    data["train"] = data["train"][::-1]  # a cached sample wins over resampling
    with open(path, "w") as f:
        json.dump(data, f)
    b = build_dataset("eurosat", root, shots=2, seed=1, cache_dir=cache_dir)
    assert b.train.records == a.train.records[::-1]


def _fake_dassl(monkeypatch):
    """A stand-in `dassl.data.datasets.base_dataset.Datum` so the test can write CoOp-style pickles."""
    module = types.ModuleType("dassl.data.datasets.base_dataset")

    class Datum:
        def __init__(self, impath, label, classname):
            self._impath, self._label, self._domain, self._classname = impath, label, 0, classname

    Datum.__module__, Datum.__qualname__ = module.__name__, "Datum"
    module.Datum = Datum
    for name in ("dassl", "dassl.data", "dassl.data.datasets"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return Datum


def test_coop_pickle_is_imported_with_relative_paths(tmp_path, monkeypatch):
    root = str(tmp_path / "DATA")
    write_coop_tree(root, "OxfordPets", per_class=(3, 2, 1))
    datum = _fake_dassl(monkeypatch)
    foreign = "/home/someone/DATA/oxford_pets/images/"
    chosen = [("c005/train_001.jpg", 5), ("c001/train_002.jpg", 1)]
    payload = {"train": [datum(foreign + k, y, f"class_{y}") for k, y in chosen],
               "val": [datum(foreign + "c002/val_000.jpg", 2, "class_2")]}
    os.makedirs(os.path.join(root, "oxford_pets", "split_fewshot"))
    with open(os.path.join(root, "oxford_pets", "split_fewshot", "shot_1-seed_9.pkl"), "wb") as f:
        pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.warns(UserWarning, match="fewer than the 1 shots"):
        pets = build_dataset("OxfordPets", root, shots=1, seed=9)
    assert [(r.key, r.label) for r in pets.train.records] == chosen
    assert os.path.isfile(os.path.join(root, "oxford_pets", "split_fewshot", "shot_1-seed_9.json"))


class _Trojan:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):   # what a hostile cache would do: unpickled in full, it creates `path`
        return os.system, (f"touch {self.path}",)


def test_coop_pickle_refuses_other_globals_and_runs_nothing(tmp_path):
    from aple_jax.data.coop_pickle import read_coop_pickle
    from aple_jax.data.errors import SplitFormatError

    marker = tmp_path / "pwned"
    for i, payload in enumerate([os.system, _Trojan(marker)]):
        path = str(tmp_path / f"evil{i}.pkl")
        with open(path, "wb") as f:
            pickle.dump({"train": [payload]}, f)
        with pytest.raises(SplitFormatError, match=rf"refusing to read CoOp cache {re.escape(path)}: it names "
                                                   rf"{os.system.__module__}\.system, which is not data"):
            read_coop_pickle(path, "/x/")
    assert not marker.exists()
    with open(path, "rb") as f:
        pickle.load(f)   # the full unpickler runs the payload: the trojan is real
    assert marker.exists()


def test_imagenet_preprocessed_pickle_fixes_the_order(tmp_path, monkeypatch):
    root = str(tmp_path / "DATA")
    write_coop_tree(root, "ImageNet", num_classes=3, per_class=(2, 1, 1))
    datum = _fake_dassl(monkeypatch)
    prefix = "/abs/DATA/imagenet/images/"
    train = [datum(prefix + f"train/n{y:08d}/n{y:08d}_{k}.JPEG", y, f"imagenet class {y}")
             for y in (2, 0, 1) for k in (1, 0)]
    test = [datum(prefix + f"val/n{y:08d}/n{y:08d}_0.JPEG", y, f"imagenet class {y}") for y in range(3)]
    with open(os.path.join(root, "imagenet", "preprocessed.pkl"), "wb") as f:
        pickle.dump({"train": train, "test": test}, f)
    imagenet = build_dataset("ImageNet", root, shots=0, seed=1)
    assert [r.key for r in imagenet.train.records][:2] == ["train/n00000002/n00000002_1.JPEG",
                                                            "train/n00000002/n00000002_0.JPEG"]
