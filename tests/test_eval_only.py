"""Eval-only mode: prompts from a run directory or a .npz, and refusals of prompts that do not fit."""
import os

import numpy as np
import pytest

from aple_jax.run import run
from tests.helpers import tiny_config

SMALL = dict(dataset__shots=4, batch_size=8, eval_batch_size=16, optim__epochs=1, log_every=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained")
    return str(workdir), run(tiny_config("ivlp", **SMALL), str(workdir))


def test_eval_only_reproduces_the_trained_runs_accuracy(trained, tmp_path):
    workdir, results = trained
    again = run(tiny_config("ivlp", eval_only_from=workdir, **SMALL), str(tmp_path / "a"))
    assert again["accuracy"] == results["accuracy"]
    npz = run(tiny_config("ivlp", eval_only_from=os.path.join(workdir, "prompts.npz"), **SMALL),
              str(tmp_path / "b"))
    assert npz["accuracy"] == results["accuracy"]
    assert not os.path.exists(tmp_path / "a" / "checkpoints")


def test_prompts_of_another_backbone_or_shape_are_refused(trained, tmp_path):
    workdir, _ = trained
    with pytest.raises(ValueError, match="another method/backbone/prompt shape.*prompts.text.n_ctx"):
        run(tiny_config("ivlp", eval_only_from=workdir, prompts__text__n_ctx=2, **SMALL), str(tmp_path / "a"))
    with pytest.raises(ValueError, match="do not fit this method and backbone"):
        run(tiny_config("ivlp", eval_only_from=os.path.join(workdir, "prompts.npz"), prompts__text__n_ctx=2,
                        **SMALL), str(tmp_path / "b"))


def test_prompts_trained_for_other_base_classes_are_refused(trained, tmp_path):
    workdir, _ = trained
    other = dict(SMALL, dataset__synthetic__num_classes=12)     # a different class list, so different base classes
    with pytest.raises(ValueError, match="trained on the base classes"):
        run(tiny_config("ivlp", eval_only_from=workdir, **other), str(tmp_path / "a"))


def test_missing_eval_only_source_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="/nowhere/run"):
        run(tiny_config("ivlp", eval_only_from="/nowhere/run", **SMALL), str(tmp_path))
