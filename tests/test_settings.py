"""The `transfer` and `all` settings end to end: one result per evaluation set, with its own class head."""
import pytest

from aple_jax.run import curve_epochs, run
from tests.helpers import tiny_config

# The world CLIP (shipped in the repo) on the procedural world: WorldTextures (5 classes) -> WorldShapes (8 classes).
WORLD = dict(backbone__name="world", dataset__name="world:WorldTextures", dataset__shots=1, batch_size=5,
             eval_batch_size=64, optim__epochs=3, log_every=1)
TEST_PER_CLASS = 20        # build_world_dataset's default


def test_curve_epochs_are_evenly_spaced_and_end_with_the_last():
    assert curve_epochs(200, 20) == set(range(10, 201, 10))
    assert curve_epochs(20, 20) == curve_epochs(20, 50) == set(range(1, 21))
    assert curve_epochs(5, 2) == {3, 5} and curve_epochs(7, 3) == {3, 6, 7}
    assert curve_epochs(20, 0) == set()


@pytest.mark.slow
def test_transfer_evaluates_every_target_with_its_own_classes(tmp_path):
    targets = ("world:WorldTextures", "world:WorldShapes")
    config = tiny_config("coop", setting="transfer", dataset__eval_datasets=targets, curve_points=2, **WORLD)
    results = run(config, str(tmp_path))
    assert results["setting"] == "transfer" and results["dataset"] == "WorldTextures"
    assert set(results["evals"]) == set(targets) and "hm" not in results
    for target, num_classes in zip(targets, (5, 8)):
        ev = results["evals"][target]
        assert ev["num_examples"] == num_classes * TEST_PER_CLASS
        assert len(ev["per_class_accuracy"]) == num_classes
        assert results["accuracy"][target] == ev["accuracy"]
    assert results["num_train_images"] == 5              # 1 shot x 5 classes
    assert [h["epoch"] for h in results["history"]] == [2, 3]   # 2 points of 3 epochs: every 2nd and the last
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
