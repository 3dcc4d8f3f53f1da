"""Few-shot sampling equals CoOp's algorithm; shortages warn or fail; base/new selection and relabelling."""
import json
import os
import random
from collections import defaultdict

import pytest

from aple_jax.data import FewShotWarning, NotEnoughShotsError, build_dataset
from aple_jax.data.fake_trees import jpeg_bytes
from aple_jax.data.fewshot import relabel, sample_fewshot_splits, select_classes
from aple_jax.data.records import Datum


def coop_fewshot(items, k, rng_module):
    """CoOp/Dassl as the protocol describes it, written independently: defaultdict per label, random.sample."""
    tracker = defaultdict(list)
    for it in items:
        tracker[it[1]].append(it)
    out = []
    for group in tracker.values():  # labels in order of first appearance
        out.extend(rng_module.sample(group, k) if len(group) >= k else group)
    return out


def _split_list(num_items, num_classes, seed):
    """An interleaved split list whose labels first appear out of order, with uneven class sizes (its own files:
    a split seeded otherwise shares none)."""
    rng = random.Random(seed)
    items = [[f"c{y}/img_{seed}_{i}.jpg", y, f"class_{y}"] for y in range(num_classes) for i in range(3 + y % 7)]
    rng.shuffle(items)
    return items[:num_items]


@pytest.mark.parametrize("shots,seed", [(1, 1), (4, 2), (16, 3)])
def test_sampling_matches_coop(shots, seed):
    train = _split_list(200, 12, seed=10 + seed)
    val = _split_list(60, 12, seed=20 + seed)
    random.seed(seed)
    want_train = coop_fewshot(train, shots, random)
    want_val = coop_fewshot(val, min(shots, 4), random)
    got_train, got_val = sample_fewshot_splits([Datum(*t) for t in train], [Datum(*v) for v in val], shots, seed)
    assert [list(d) for d in got_train] == want_train
    assert [list(d) for d in got_val] == want_val


def _write_tree(root, split):
    image = jpeg_bytes()
    for part in split.values():
        for key, _, _ in part:
            path = os.path.join(root, "oxford_pets", "images", key)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(image)
    with open(os.path.join(root, "oxford_pets", "split_zhou_OxfordPets.json"), "w") as f:
        json.dump(split, f)


def test_build_dataset_picks_coops_images(tmp_path):
    split = {"train": _split_list(150, 8, 1), "val": _split_list(40, 8, 2), "test": _split_list(30, 8, 3)}
    _write_tree(str(tmp_path), split)
    random.seed(2)
    want_train = coop_fewshot(split["train"], 4, random)
    want_val = coop_fewshot(split["val"], 4, random)
    with pytest.warns(FewShotWarning):  # two classes have 3 images
        pets = build_dataset("OxfordPets", str(tmp_path), shots=4, seed=2)
    assert [list(r) for r in pets.train.records] == want_train
    assert [list(r) for r in pets.val.records] == want_val


def test_too_few_images_warns_and_keeps_all(tmp_path):
    split = {"train": _split_list(150, 8, 1), "val": _split_list(40, 8, 2), "test": _split_list(30, 8, 3)}
    _write_tree(str(tmp_path), split)
    with pytest.warns(FewShotWarning, match="fewer than the 8 shots") as record:
        pets = build_dataset("OxfordPets", str(tmp_path), shots=8, seed=1)
    counts = {y: sum(1 for it in split["train"] if it[1] == y) for y in range(8)}
    assert len(pets.train) == sum(min(n, 8) for n in counts.values())
    assert str(len(pets.train)) in str(record[0].message)  # the warning states the real count
    with pytest.raises(NotEnoughShotsError, match="class_0"):
        build_dataset("OxfordPets", str(tmp_path), shots=8, seed=1, strict_shots=True, cache_dir=str(tmp_path / "c"))


def test_select_classes_and_relabel():
    assert select_classes(range(37), "base") == list(range(19))
    assert select_classes(range(37), "new") == list(range(19, 37))
    assert select_classes(range(101), "new")[0] == 51 and len(select_classes(range(397), "new")) == 198
    records = [Datum("a", 20, "x"), Datum("b", 3, "y"), Datum("c", 25, "z")]
    assert relabel(records, [20, 25]) == [Datum("a", 0, "x"), Datum("c", 1, "z")]
    with pytest.raises(ValueError, match="subsample"):
        select_classes(range(4), "novel")


def test_synthetic_shots_and_base_new():
    full = build_dataset("synthetic", None, shots=4, seed=1, num_classes=10)
    assert full.num_classes == 10 and len(full.train) == 40 and len(full.val) == 40 and len(full.test) == 80
    base = build_dataset("synthetic", None, shots=4, seed=1, num_classes=10, subsample="base")
    new = build_dataset("synthetic", None, shots=4, seed=1, num_classes=10, subsample="new")
    assert base.classnames + new.classnames == full.classnames
    assert sorted(set(new.test.labels.tolist())) == list(range(5))
    other_seed = build_dataset("synthetic", None, shots=4, seed=2, num_classes=10)
    assert other_seed.train.records != full.train.records
