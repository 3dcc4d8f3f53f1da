"""Eval-only mode: prompts from a run directory or a .npz, and refusals of prompts that do not fit."""
import os
import re

import numpy as np
import pytest

from aple_jax import prompts as P
from aple_jax.prompt_files import PROMPTS_META_KEY, read_prompts, read_prompts_meta
from aple_jax.run import build_setting, check_trained_run, run
from tests.helpers import tiny_config

SMALL = dict(dataset__shots=4, batch_size=8, eval_batch_size=16, optim__epochs=1, log_every=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained")
    return str(workdir), run(tiny_config("ivlp", **SMALL), str(workdir))


@pytest.fixture(scope="module")
def old_npz(trained, tmp_path_factory):
    """The trained prompts as a .npz written before `__meta__` existed."""
    path = str(tmp_path_factory.mktemp("old") / "prompts.npz")
    with np.load(os.path.join(trained[0], "prompts.npz")) as f:
        np.savez(path, **{k: f[k] for k in f.files if k != PROMPTS_META_KEY})
    return path


def _check(source, method="ivlp", **overrides):
    """check_trained_run as eval-only runs call it, without loading a backbone."""
    config = tiny_config(method, eval_only_from=source, **dict(SMALL, **overrides))
    check_trained_run(source, config, build_setting(config))


def test_a_run_records_its_training_images_and_its_prompts_provenance(trained):
    workdir, results = trained
    assert results["num_train_images"] == 4 * 5          # 4 shots x the 5 base classes of 10
    meta = read_prompts_meta(os.path.join(workdir, "prompts.npz"))
    assert meta["config"]["method"] == "ivlp" and meta["config"]["backbone.name"] == "tiny"
    assert meta["config"]["backbone.weights"] == "" and meta["config"]["prompts.text.n_ctx"] == 4
    assert meta["train"]["dataset"] == "Synthetic" and len(meta["train"]["classnames"]) == 5


def test_eval_only_reproduces_the_trained_runs_accuracy(trained, tmp_path):
    workdir, results = trained
    again = run(tiny_config("ivlp", eval_only_from=workdir, **SMALL), str(tmp_path / "a"))
    assert again["accuracy"] == results["accuracy"]
    assert again["num_train_images"] == 0                # no training in an eval-only run
    npz = run(tiny_config("ivlp", eval_only_from=os.path.join(workdir, "prompts.npz"), **SMALL),
              str(tmp_path / "b"))
    assert npz["accuracy"] == results["accuracy"]
    assert not os.path.exists(tmp_path / "a" / "checkpoints")


def test_an_npz_without_meta_still_loads_unchecked(trained, old_npz):
    assert read_prompts_meta(old_npz) is None
    _check(old_npz, backbone__name="tiny-hf", dataset__synthetic__num_classes=12)     # nothing to check against
    new = dict(np.load(os.path.join(trained[0], "prompts.npz")))
    like = P.unflatten({k: v for k, v in new.items() if k != PROMPTS_META_KEY})
    loaded = P.flatten(read_prompts(old_npz, like))
    assert sorted(loaded) == sorted(k for k in new if k != PROMPTS_META_KEY)
    assert all(np.array_equal(loaded[k], new[k]) for k in loaded)


def test_prompts_of_another_shape_are_refused(trained, old_npz, tmp_path):
    workdir, _ = trained
    with pytest.raises(ValueError, match="another method/backbone/prompt shape.*prompts.text.n_ctx"):
        run(tiny_config("ivlp", eval_only_from=workdir, prompts__text__n_ctx=2, **SMALL), str(tmp_path / "a"))
    npz = os.path.join(workdir, "prompts.npz")
    with pytest.raises(ValueError, match=f"prompts in {re.escape(npz)} .*another .*prompts.text.n_ctx: trained 4"):
        _check(npz, prompts__text__n_ctx=2)
    with pytest.raises(ValueError, match="do not fit this method and backbone"):      # an old file: leaf shapes
        run(tiny_config("ivlp", eval_only_from=old_npz, prompts__text__n_ctx=2, **SMALL), str(tmp_path / "b"))


def test_prompts_of_another_backbone_of_the_same_widths_are_refused(trained):
    """`tiny-hf` stands for a checkpoint with tiny's widths: the prompt shapes fit, only the provenance differs."""
    workdir, _ = trained
    for source in (workdir, os.path.join(workdir, "prompts.npz")):
        with pytest.raises(ValueError, match=f"prompts in {re.escape(source)} were trained with another method/"
                                             "backbone/prompt shape \\(backbone.name: trained 'tiny', now 'tiny-hf', "
                                             "backbone.weights: trained '', now '/ckpt/tiny-hf'\\)"):
            _check(source, backbone__name="tiny-hf", backbone__weights="/ckpt/tiny-hf")


def test_an_npz_of_another_backbone_is_refused_by_run(trained, tmp_path):
    npz = os.path.join(trained[0], "prompts.npz")       # the shipped world CLIP: loads fast, no tiny compile
    with pytest.raises(ValueError, match=f"prompts in {re.escape(npz)} .*backbone.name: trained 'tiny', now 'world'"):
        run(tiny_config("ivlp", eval_only_from=npz, backbone__name="world", **SMALL), str(tmp_path))


def test_prompts_of_another_method_are_refused(trained):
    npz = os.path.join(trained[0], "prompts.npz")
    with pytest.raises(ValueError, match="method: trained 'ivlp', now 'promptsrc'"):
        _check(npz, method="promptsrc")


def test_prompts_trained_for_other_base_classes_are_refused(trained, tmp_path):
    workdir, _ = trained
    other = dict(SMALL, dataset__synthetic__num_classes=12)     # a different class list, so different base classes
    with pytest.raises(ValueError, match="trained on the base classes"):
        run(tiny_config("ivlp", eval_only_from=workdir, **other), str(tmp_path / "a"))
    npz = os.path.join(workdir, "prompts.npz")
    with pytest.raises(ValueError, match=f"prompts in {re.escape(npz)} were trained on the base classes"):
        _check(npz, dataset__synthetic__num_classes=12)
    _check(npz, dataset__synthetic__num_classes=12, setting="all")    # no base classes to hold it to


def test_missing_eval_only_source_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="/nowhere/run"):
        run(tiny_config("ivlp", eval_only_from="/nowhere/run", **SMALL), str(tmp_path))
