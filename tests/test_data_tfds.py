"""TFDS sources with `tfds.testing.mock_data` (no TensorFlow): CoOp names, label remaps, splits."""
import io
import pickle

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from aple_jax.data import MissingDataError, build_dataset
from aple_jax.data.tfds_source import TfdsImages, scan_labels

NUM_EXAMPLES = 60


def _build(name, tmp_path, **kw):
    kw.setdefault("shots", 0)
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        splits = build_dataset(f"tfds:{name}", None, seed=1, cache_dir=str(tmp_path), **kw)
        example = splits.test[0]
        raw = tfds.data_source(name, split="test" if name != "eurosat/rgb" else "train")
        raw_labels = [int(raw[i]["label"]) for i in range(len(raw))]
    return splits, example, raw_labels


def _check_example(example, num_classes):
    assert example["image"].dtype == np.uint8 and example["image"].ndim == 3 and example["image"].shape[-1] == 3
    assert 0 <= example["label"] < num_classes


def test_oxford_pets(tmp_path):
    pets, example, raw_labels = _build("oxford_iiit_pet", tmp_path)
    assert pets.name == "OxfordPets" and pets.num_classes == 37
    assert pets.classnames[0] == "abyssinian" and pets.classnames[1] == "american bulldog"
    assert pets.template == "a photo of a {}, a type of pet."
    assert pets.test.labels.tolist() == raw_labels  # same order of classes as TFDS
    _check_example(example, 37)
    # no validation split in TFDS: 20% of train per class is carved off, disjoint from train
    assert not {r.key for r in pets.train.records} & {r.key for r in pets.val.records}
    base, _, _ = _build("oxford_iiit_pet", tmp_path, subsample="base")
    new, _, _ = _build("oxford_iiit_pet", tmp_path, subsample="new")
    assert (base.num_classes, new.num_classes) == (19, 18)
    assert base.classnames + new.classnames == pets.classnames


def test_caltech101_keeps_coops_100_classes(tmp_path):
    caltech, example, raw_labels = _build("caltech101", tmp_path)
    names = tfds.builder("caltech101").info.features["label"].names
    assert caltech.num_classes == 100
    assert caltech.classnames[:4] == ["face", "leopard", "motorbike", "accordion"]  # CoOp's case-sensitive order
    assert "airplane" in caltech.classnames and "background google" not in caltech.classnames
    dropped = {names.index("background_google"), names.index("faces_easy")}
    kept = [y for y in raw_labels if y not in dropped]
    assert len(caltech.test) == len(kept)
    assert [caltech.classnames[y] for y in caltech.test.labels] == [
        {"faces": "face", "leopards": "leopard", "motorbikes": "motorbike", "airplanes": "airplane"}.get(
            names[y], names[y]).replace("_", " ") for y in kept]
    _check_example(example, 100)


def test_dtd(tmp_path):
    dtd, example, raw_labels = _build("dtd", tmp_path)
    assert dtd.name == "DescribableTextures" and dtd.num_classes == 47 and dtd.classnames[0] == "banded"
    assert dtd.template == "{} texture." and dtd.test.labels.tolist() == raw_labels
    _check_example(example, 47)


def test_eurosat_names_and_generated_split(tmp_path):
    eurosat, example, _ = _build("eurosat/rgb", tmp_path)
    assert eurosat.classnames[0] == "Annual Crop Land" and eurosat.classnames[-1] == "Sea or Lake"
    keys = [{r.key for r in s.records} for s in (eurosat.train, eurosat.val, eurosat.test)]
    assert sum(map(len, keys)) == NUM_EXAMPLES and not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    _check_example(example, 10)


def test_imagenet_a_remaps_1000_to_present_classes(tmp_path):
    wnids = tfds.builder("imagenet_a").info.features["label"].names
    classnames = tmp_path / "classnames.txt"
    classnames.write_text("".join(f"{w} clip name {i}\n" for i, w in enumerate(wnids)))
    imagenet_a, example, raw_labels = _build("imagenet_a", tmp_path, classnames_file=str(classnames))
    present = sorted(set(raw_labels))
    assert imagenet_a.num_classes == len(present)  # the real dataset has 200
    assert imagenet_a.classnames == [f"clip name {y}" for y in present]
    assert imagenet_a.test.labels.tolist() == [present.index(y) for y in raw_labels]
    assert len(imagenet_a.train) == len(imagenet_a.test) == NUM_EXAMPLES
    _check_example(example, len(present))


def test_fewshot_on_tfds(tmp_path):
    with pytest.warns(UserWarning, match="fewer than the 2 shots"):  # 60 mock images over 47 classes
        dtd, _, _ = _build("dtd", tmp_path, shots=2)
    counts = np.bincount(dtd.train.labels, minlength=47)
    assert counts.max() <= 2


class TinyDs(tfds.core.GeneratorBasedBuilder):
    """A real ArrayRecord dataset, prepared without TensorFlow (images given already encoded)."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=["a", "b", "c"])}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(7)}

    def _generate_examples(self, n):
        from PIL import Image
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(np.full((4, 5, 3), i, np.uint8)).save(buf, format="PNG")
            yield i, {"image": io.BytesIO(buf.getvalue()), "label": (i * 2) % 3}


def test_prepared_array_records_labels_and_pickled_loader(tmp_path):
    TinyDs(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    labels = scan_labels("tiny_ds", "train", str(tmp_path))
    source = tfds.data_source("tiny_ds", split="train", data_dir=str(tmp_path))
    assert labels.tolist() == [int(source[i]["label"]) for i in range(len(source))]
    assert sorted(labels.tolist()) == sorted((i * 2) % 3 for i in range(7))
    loader = pickle.loads(pickle.dumps(TfdsImages("tiny_ds", "train", str(tmp_path))))  # as grain workers get it
    np.testing.assert_array_equal(loader(3), source[3]["image"])


def test_unprepared_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(MissingDataError, match="(?s)'oxford_iiit_pet' split 'train' is not prepared.*docs/data.md"):
        build_dataset("tfds:oxford_iiit_pet", str(tmp_path), shots=1, seed=1)
