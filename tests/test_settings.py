"""The `transfer` and `all` settings end to end: one result per evaluation set, with its own class head."""
import pytest

from aple_jax.run import run
from tests.helpers import tiny_config

# The world CLIP (shipped in the repo) on the procedural world: WorldTextures (5 classes) -> WorldShapes (8 classes).
WORLD = dict(backbone__name="world", dataset__name="world:WorldTextures", dataset__shots=1, batch_size=5,
             eval_batch_size=64, optim__epochs=2, log_every=1)
TEST_PER_CLASS = 20        # build_world_dataset's default


@pytest.mark.slow
def test_transfer_evaluates_every_target_with_its_own_classes(tmp_path):
    targets = ("world:WorldTextures", "world:WorldShapes")
    config = tiny_config("coop", setting="transfer", dataset__eval_datasets=targets, eval_every_epoch=True, **WORLD)
    results = run(config, str(tmp_path))
    assert results["setting"] == "transfer" and results["dataset"] == "WorldTextures"
    assert set(results["evals"]) == set(targets) and "hm" not in results
    for target, num_classes in zip(targets, (5, 8)):
        ev = results["evals"][target]
        assert ev["num_examples"] == num_classes * TEST_PER_CLASS
        assert len(ev["per_class_accuracy"]) == num_classes
        assert results["accuracy"][target] == ev["accuracy"]
    assert results["num_train_images"] == 5              # 1 shot x 5 classes
    assert [h["epoch"] for h in results["history"]] == [1, 2]       # one entry per epoch, every target in each
    assert all(set(targets) <= set(h) for h in results["history"])


@pytest.mark.slow
def test_all_trains_and_evaluates_on_every_class(tmp_path):
    config = tiny_config("coop", setting="all", dataset__shots=2, batch_size=10, eval_batch_size=64, optim__epochs=1)
    results = run(config, str(tmp_path))
    assert list(results["evals"]) == ["all"] and "hm" not in results
    assert results["evals"]["all"]["num_examples"] == 10 * 8           # the synthetic test split: 10 classes x 8
    assert len(results["evals"]["all"]["per_class_accuracy"]) == 10
    assert results["num_train_images"] == 2 * 10
    assert results["history"] == []
