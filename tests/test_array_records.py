"""ArrayRecord copies of CoOp datasets: the command's layout, and that a run on the copy sees the same data."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from aple_jax.data import build_dataset
from aple_jax.data.array_records import INDEX_FILE, ArrayRecordImages
from aple_jax.data.errors import DataError, MissingDataError
from aple_jax.data.fake_trees import jpeg_bytes, write_coop_tree
from aple_jax.data.to_array_record import convert, main
from aple_jax.errors import AplejaxError

DATASETS = ("DescribableTextures", "StanfordCars", "FGVCAircraft")   # a JSON split, images at the top, a list


def _distinct_tree(root, name):
    """A fake tree whose images all differ (so a wrong record position would show as other pixels)."""
    write_coop_tree(str(root), name, num_classes=6, per_class=(5, 2, 2))
    for i, (dirpath, _, files) in enumerate(sorted(os.walk(root))):
        for j, f in enumerate(sorted(files)):
            if f.endswith(".jpg"):
                with open(os.path.join(dirpath, f), "wb") as out:
                    out.write(jpeg_bytes(8 + j % 5, 9 + i % 4, seed=1000 * i + j))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    data, out = tmp_path_factory.mktemp("DATA"), tmp_path_factory.mktemp("OUT")
    for name in DATASETS:
        _distinct_tree(data, name)
    build_dataset("dtd", str(data), shots=2, seed=5)      # a few-shot cache in the source, copied as it is
    rc = subprocess.run([sys.executable, "-m", "aple_jax.data.to_array_record", "--dataset", "dtd",
                         "--data", str(data), "--out", str(out), "--shard-mb", "0", "--workers", "2"],
                        capture_output=True, text=True)   # 2 workers: 16 images a chunk, 54 images
    assert rc.returncode == 0, rc.stderr
    for name in DATASETS[1:]:
        main(["--dataset", name, "--data", str(data), "--out", str(out)])
    return str(data), str(out)


def _images(source):
    return [source[i]["image"] for i in range(len(source))]


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("shots,subsample", [(0, "all"), (2, "base"), (4, "new")])
def test_copy_reads_the_same_dataset(converted, name, shots, subsample):
    data, out = converted
    a = build_dataset(name, data, shots=shots, seed=5, subsample=subsample)
    b = build_dataset(name, out, shots=shots, seed=5, subsample=subsample)
    assert isinstance(b.train.loader, ArrayRecordImages) and not isinstance(a.train.loader, ArrayRecordImages)
    assert a.classnames == b.classnames and a.template == b.template
    for split in ("train", "val", "test"):
        sa, sb = getattr(a, split), getattr(b, split)
        assert sa.records == sb.records                      # same few-shot picks, labels and order
        for x, y in zip(_images(sa), _images(sb), strict=True):
            assert x.dtype == y.dtype == np.uint8 and np.array_equal(x, y)


def test_copy_layout(converted):
    data, out = converted
    dtd_out = os.path.join(out, "dtd")
    names = sorted(os.listdir(dtd_out))
    assert "images" not in names and INDEX_FILE in names and "split_zhou_DescribableTextures.json" in names
    shards = [n for n in names if n.endswith(".array_record")]
    assert len(shards) == 6 * 9 and shards[0] == "images-00000-of-00054.array_record"   # --shard-mb 0: one each
    for f in ("split_zhou_DescribableTextures.json", "split_fewshot/shot_2-seed_5.json"):
        with open(os.path.join(data, "dtd", f), "rb") as x, open(os.path.join(dtd_out, f), "rb") as y:
            assert x.read() == y.read()
    cars = sorted(set(os.listdir(os.path.join(out, "stanford_cars"))) - {"split_fewshot"})   # image folders skipped
    assert cars == sorted([INDEX_FILE, "split_zhou_StanfordCars.json", "images-00000-of-00001.array_record"])


def test_loader_pickles_without_its_index(converted):
    _, out = converted
    loader = build_dataset("fgvc_aircraft", out, shots=0, seed=1).test.loader
    key = next(iter(loader.positions))
    clone = pickle.loads(pickle.dumps(loader))
    assert clone._positions is None and np.array_equal(clone(key), loader(key))


def test_errors_name_what_is_wrong(converted, tmp_path):
    data, out = converted
    with pytest.raises(MissingDataError, match=str(tmp_path / "nowhere" / "dtd")):
        convert("dtd", str(tmp_path / "nowhere"), str(tmp_path / "o"))
    with pytest.raises(AplejaxError, match="already a converted copy"):
        convert("dtd", out, str(tmp_path / "o"))
    write_coop_tree(str(tmp_path / "v"), "ImageNetSketch", num_classes=2, per_class=(1, 1, 1))
    with pytest.raises(DataError, match="scanning the image folders"):
        convert("imagenet_sketch", str(tmp_path / "v"), str(tmp_path / "o"))
    with pytest.raises(MissingDataError, match="not in the ArrayRecord files"):
        ArrayRecordImages(os.path.join(out, "dtd"))("c000/nope.jpg")
    rc = subprocess.run([sys.executable, "-m", "aple_jax.data.to_array_record", "--dataset", "OxfordPets",
                         "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
                        capture_output=True, text=True)
    assert rc.returncode == 2 and "error:" in rc.stderr and "oxford_pets" in rc.stderr


@pytest.mark.gcs
def test_bucket_to_bucket_copy_reads_the_same_dataset(gcs, tmp_path):
    import fsspec
    local = tmp_path / "DATA"
    _distinct_tree(local, "OxfordPets")
    fsspec.filesystem("gs").put(str(local) + "/", f"{gcs}/DATA/".removeprefix("gs://"), recursive=True)
    dst = convert("OxfordPets", f"{gcs}/DATA", f"{gcs}/OUT", shard_mb=0)
    assert dst == f"{gcs}/OUT/oxford_pets"
    a = build_dataset("OxfordPets", str(local), shots=2, seed=3, subsample="new")
    b = build_dataset("OxfordPets", f"{gcs}/OUT", shots=2, seed=3, subsample="new")
    assert isinstance(b.test.loader, ArrayRecordImages) and a.classnames == b.classnames
    for split in ("train", "val", "test"):
        sa, sb = getattr(a, split), getattr(b, split)
        assert sa.records == sb.records
        assert all(np.array_equal(x, y) for x, y in zip(_images(sa), _images(sb), strict=True))
