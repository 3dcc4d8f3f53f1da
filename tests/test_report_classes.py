"""Per-class results: counts in results.json, confusion.npz beside it, tables and pictures from the report."""
import json
import os

import numpy as np
import pytest

from aple_jax import report_classes
from aple_jax.report import report
from aple_jax.run import build_setting, run
from tests.helpers import tiny_config

SMALL = dict(dataset__shots=4, batch_size=8, eval_batch_size=16, optim__epochs=1, log_every=2, zeroshot__compare=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("runs") / "ivlp"
    config = tiny_config("ivlp", **SMALL)
    return str(workdir), run(config, str(workdir)), build_setting(config)


def test_every_evaluation_stores_per_class_counts_and_its_confusion(trained):
    workdir, results, setting = trained
    confusions = report_classes.read_confusions(workdir)
    assert sorted(confusions) == ["base", "new", "zero_shot/base", "zero_shot/new"]
    for ev in setting.evals:
        for stored, matrix in ((results["evals"][ev.name], confusions[ev.name]),
                               (results["zero_shot"]["evals"][ev.name], confusions[f"zero_shot/{ev.name}"])):
            assert stored["classnames"] == list(ev.splits.classnames)
            assert sum(stored["per_class_total"]) == len(ev.splits.test) == stored["num_examples"]
            assert stored["per_class_total"] == np.bincount(ev.splits.test.labels).tolist()
            assert matrix.shape == (ev.splits.num_classes,) * 2 and matrix.sum() == len(ev.splits.test)
            assert matrix.sum(1).tolist() == stored["per_class_total"]
            assert np.diagonal(matrix).tolist() == stored["per_class_correct"]
            assert 100.0 * np.trace(matrix) / matrix.sum() == pytest.approx(stored["accuracy"], abs=1e-9)
        assert results["zero_shot"]["accuracy"][ev.name] == results["zero_shot"]["evals"][ev.name]["accuracy"]


def test_report_writes_per_class_tables_and_confusion_pictures(trained, tmp_path):
    workdir, results, _ = trained
    summary = report(os.path.dirname(workdir), str(tmp_path / "out"))
    assert sorted(summary["per_class"]) == ["per_class/ivlp.md", "per_class/ivlp_base.png", "per_class/ivlp_new.png"]
    page = (tmp_path / "out" / "per_class" / "ivlp.md").read_text()
    for name, ev in results["evals"].items():
        assert f"## {name}: {ev['accuracy']:.2f}% over {ev['num_examples']} images" in page
        for cls, c, n in zip(ev["classnames"], ev["per_class_correct"], ev["per_class_total"]):
            assert f"| {cls} | {c} / {n} | {100 * c / n:.2f} |" in page
    assert "Gained most against zero-shot" in page and "Lost most against zero-shot" in page
    assert json.loads((tmp_path / "out" / "results.json").read_text())["per_class"] == summary["per_class"]


def test_gains_and_losses_against_zero_shot():
    run_eval = {"classnames": ["a", "b", "c", "d"], "per_class_correct": [4, 1, 2, 0], "per_class_total": [4, 4, 4, 2]}
    zs_eval = {"classnames": ["a", "b", "c", "d"], "per_class_correct": [1, 3, 2, 1], "per_class_total": [4, 4, 4, 2]}
    rows = report_classes.class_rows(run_eval, zs_eval)
    gained, lost = report_classes.changes(rows)
    assert [(r["class"], r["change"]) for r in gained] == [("a", 75.0)]
    assert [(r["class"], r["change"]) for r in lost] == [("b", -50.0), ("d", -50.0)]
    assert report_classes.class_rows({"accuracy": 50.0}) == []       # results.json written before per-class counts


def test_confusion_order_puts_confused_classes_side_by_side():
    rng = np.random.default_rng(0)
    blocks = [[0, 5, 9], [1, 7], [2, 4, 8], [3, 6]]
    confusion = np.diag(rng.integers(20, 30, 10))
    for block in blocks:
        for i in block:
            for j in block:
                if i != j:
                    confusion[i, j] = rng.integers(3, 6)
    order = report_classes.confusion_order(confusion).tolist()
    assert sorted(order) == list(range(10))
    for block in blocks:
        positions = sorted(order.index(c) for c in block)
        assert positions[-1] - positions[0] == len(block) - 1, (order, block)


def test_a_thousand_class_confusion_stays_one_bounded_picture(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    n = 1000
    confusion = np.diag(rng.integers(0, 50, n))
    confusion[rng.integers(0, n, 5000), rng.integers(0, n, 5000)] += 1
    path = str(tmp_path / "c.png")
    report_classes.plot_confusion(confusion, [f"class {i}" for i in range(n)], "1000 classes", path)
    with Image.open(path) as img:
        assert max(img.size) <= 2200


def test_run_slugs_name_runs_below_and_beside_the_runs_directory():
    from aple_jax.report_classes import run_slug
    assert run_slug("/r/coop/DTD/seed1", "/r") == "coop_DTD_seed1"
    assert run_slug("/r", "/r") == "r"
    assert run_slug("/other/coop+dept/seed1", "/docs/studies/b2n") == "other_coop+dept_seed1"   # no `..`
