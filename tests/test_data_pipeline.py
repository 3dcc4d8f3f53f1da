"""grain pipeline: seeded per-epoch shuffling, drop-last, exact resume, padded eval, workers, devices."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from aple_jax.data import build_dataset
from aple_jax.data.elements import BatchLayout, EvalElement, TrainElement
from aple_jax.data.pipeline import eval_loader, host_batches, train_loader
from aple_jax.sharding import make_mesh

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class IndexSource:
    """Example i: a random 12x10 image seeded by i, label i (so batches reveal the order)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        image = np.random.default_rng(i).integers(0, 256, (12, 10, 3), dtype=np.uint8)
        return {"image": image, "label": i}


@pytest.fixture(scope="module")
def mesh():
    return make_mesh()


def _take(loader, n):
    return [jax.device_get(next(loader)) for _ in range(n)]


def test_train_batches_are_global_sharded_arrays(mesh):
    loader = train_loader(IndexSource(10), global_batch_size=4, image_size=16, seed=0, mesh=mesh)
    batch = next(loader)
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["label"].sharding.spec == jax.P("data")
    assert loader.steps_per_epoch == 2
    # "index" is each example's position in the source (IndexSource labels example i with i).
    np.testing.assert_array_equal(np.asarray(batch["index"]), np.asarray(batch["label"]))


def test_epochs_are_reshuffled_and_drop_last(mesh):
    loader = train_loader(IndexSource(22), global_batch_size=4, image_size=8, seed=5, mesh=mesh)
    assert loader.steps_per_epoch == 5
    epochs = [np.concatenate([b["label"] for b in _take(loader, 5)]) for _ in range(3)]
    for labels in epochs:
        assert len(set(labels.tolist())) == 20 and set(labels.tolist()) <= set(range(22))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


def test_same_seed_same_batches(mesh):
    kwargs = {"global_batch_size": 4, "image_size": 8, "mesh": mesh}
    a = _take(train_loader(IndexSource(9), seed=1, **kwargs), 4)
    b = _take(train_loader(IndexSource(9), seed=1, **kwargs), 4)
    c = _take(train_loader(IndexSource(9), seed=2, **kwargs), 4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert any(not np.array_equal(x["label"], z["label"]) for x, z in zip(a, c))


def test_restored_state_continues_the_sequence(mesh):
    kwargs = {"global_batch_size": 4, "image_size": 8, "seed": 3, "mesh": mesh}
    loader = train_loader(IndexSource(10), **kwargs)
    _take(loader, 3)
    state = json.loads(json.dumps(loader.get_state()))
    want = _take(loader, 4)  # crosses an epoch boundary
    restored = train_loader(IndexSource(10), **kwargs)
    restored.set_state(state)
    for x, y in zip(want, _take(restored, 4)):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def test_eval_sees_every_example_once_with_padding(mesh):
    loader = eval_loader(IndexSource(10), global_batch_size=4, image_size=8, mesh=mesh)
    batches = list(host_batches(loader))
    assert len(loader) == len(batches) == 3
    assert [b["mask"].tolist() for b in batches][-1] == [True, True, False, False]
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    assert labels.tolist() == list(range(10))
    assert not batches[-1]["image"][2:].any()
    assert len(list(host_batches(loader))) == 3  # re-iterable


def test_process_slices_tile_the_global_batch():
    """Each of 2 processes feeds half of every global batch; together they give the 1-process batches."""
    source = IndexSource(13)
    single = TrainElement(source, BatchLayout(4, 4, 0), 8, seed=7, augment=False)
    halves = [TrainElement(source, BatchLayout(4, 2, p), 8, seed=7, augment=False) for p in (0, 1)]
    for step in range(7):
        want = [single(step * 4 + j)["label"] for j in range(4)]
        got = [halves[p](step * 2 + j)["label"] for p in (0, 1) for j in range(2)]
        assert got == want
    evals = [EvalElement(source, BatchLayout(4, 2, p), 8) for p in (0, 1)]
    seen = [int(e(b * 2 + j)["label"]) for b in range(4) for e in evals for j in range(2) if e(b * 2 + j)["mask"]]
    assert seen == list(range(13))


def test_worker_processes_give_the_same_batches(mesh):
    splits = build_dataset("synthetic", None, shots=4, seed=1, num_classes=4, image_size=24)
    kwargs = {"global_batch_size": 4, "image_size": 16, "seed": 2, "mesh": mesh}
    in_process = train_loader(splits.train, **kwargs)
    workers = train_loader(splits.train, num_workers=2, **kwargs)
    try:
        for x, y in zip(_take(in_process, 5), _take(workers, 5)):
            np.testing.assert_array_equal(x["image"], y["image"])
            np.testing.assert_array_equal(x["label"], y["label"])
        state = json.loads(json.dumps(workers.get_state()))
        want = _take(workers, 2)
    finally:
        workers.close()
    restored = train_loader(splits.train, num_workers=2, **kwargs)
    try:
        restored.set_state(state)
        for x, y in zip(want, _take(restored, 2)):
            np.testing.assert_array_equal(x["label"], y["label"])
        restored.set_state(state["iterator"])   # a bare grain state, as older checkpoints hold
        for x, y in zip(want, _take(restored, 2)):
            np.testing.assert_array_equal(x["label"], y["label"])
    finally:
        restored.close()
    eval_workers = list(host_batches(eval_loader(splits.test, global_batch_size=6, image_size=16, mesh=mesh,
                                                 num_workers=2)))
    eval_local = list(host_batches(eval_loader(splits.test, global_batch_size=6, image_size=16, mesh=mesh)))
    for x, y in zip(eval_local, eval_workers):
        np.testing.assert_array_equal(x["image"], y["image"])


def test_bad_image_in_the_pipeline_names_the_path(tmp_path, mesh):
    from aple_jax.data.fake_trees import jpeg_bytes, write_coop_tree

    write_coop_tree(str(tmp_path), "EuroSAT", per_class=(2, 1, 1))
    bad = os.path.join(str(tmp_path), "eurosat", "2750", "c000", "test_000.jpg")
    with open(bad, "wb") as f:   # the header intact, so the build's header check passes; the decoder fails
        f.write(jpeg_bytes(200, 200)[:5000])
    splits = build_dataset("EuroSAT", str(tmp_path), shots=1, seed=1)
    with pytest.raises(Exception, match="cannot decode image .*test_000.jpg"):
        list(eval_loader(splits.test, global_batch_size=5, image_size=8, mesh=mesh))


def test_batch_larger_than_the_training_set(mesh):
    with pytest.raises(ValueError, match="3 images, fewer than the global batch size 4"):
        train_loader(IndexSource(3), global_batch_size=4, image_size=8, seed=0, mesh=mesh)


_MULTI_DEVICE = textwrap.dedent("""
    import json, os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    from aple_jax.data import build_dataset
    from aple_jax.data.pipeline import eval_loader, train_loader
    from aple_jax.sharding import make_mesh
    mesh = make_mesh()
    splits = build_dataset("synthetic", None, shots=4, seed=1, num_classes=6)
    loader = train_loader(splits.train, global_batch_size=16, image_size=16, seed=4, mesh=mesh)
    batch = next(loader)
    shards = {s.data.shape for s in batch["image"].addressable_shards}
    labels = [np.asarray(batch["label"]).tolist(), np.asarray(next(loader)["label"]).tolist()]
    masks = [int(np.asarray(b["mask"]).sum()) for b in eval_loader(splits.test, global_batch_size=16,
                                                                     image_size=16, mesh=mesh)]
    print(json.dumps({"devices": len(jax.devices()), "shards": sorted(map(list, shards)),
                      "spec": str(batch["image"].sharding.spec), "labels": labels, "masks": masks}))
""")


def test_multi_device_sharding(mesh):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", _MULTI_DEVICE], env=env, capture_output=True, text=True,
                         timeout=300, cwd=REPO, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8 and result["shards"] == [[2, 16, 16, 3]] and "data" in result["spec"]
    splits = build_dataset("synthetic", None, shots=4, seed=1, num_classes=6)
    loader = train_loader(splits.train, global_batch_size=16, image_size=16, seed=4, mesh=mesh)
    assert result["labels"] == [b["label"].tolist() for b in _take(loader, 2)]  # same batches on 1 or 8 devices
    assert result["masks"] == [16, 16, 16]  # 48 test images
