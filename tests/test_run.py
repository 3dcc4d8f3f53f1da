"""End-to-end runs on the synthetic dataset with a tiny random CLIP: results, resume, compilations, bad input."""
import json
import os

import numpy as np
import pytest

from aple_jax import train
from aple_jax.run import run
from tests.helpers import tiny_config

SMALL = dict(dataset__shots=8, batch_size=8, eval_batch_size=16, stage1__epochs=1, stage2__epochs=1,
             log_every=2)


def _prompts(workdir):
    with np.load(os.path.join(workdir, "prompts.npz")) as f:
        return {k: f[k] for k in f.files}


def test_aple_run_writes_results_checkpoints_and_metrics(tmp_path):
    results = run(tiny_config("aple", **SMALL), str(tmp_path))
    assert set(results["accuracy"]) == {"base", "new"}
    assert results["evals"]["base"]["num_examples"] == 5 * 8     # 5 base classes x 8 test images
    assert results["compilations"] == {"L": 1, "V": 1, "LV": 1}
    assert 0 < results["hm"] <= 100
    for name in ("results.json", "config.json", "metrics.jsonl", "prompts.npz"):
        assert os.path.getsize(tmp_path / name) > 0
    assert os.listdir(tmp_path / "checkpoints")
    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert {"loss", "ce", "kl", "accuracy"} <= set(logged[0])


def test_rerun_of_a_finished_run_returns_its_results(tmp_path):
    first = run(tiny_config("zeroshot"), str(tmp_path))
    assert run(tiny_config("zeroshot"), str(tmp_path)) == first


def test_interrupted_run_resumes_to_the_same_prompts_bit_for_bit(tmp_path):
    config = tiny_config("aple", checkpoint_every_steps=3, **SMALL)
    run(config, str(tmp_path / "full"))
    steps_per_phase = train.steps_per_epoch(5 * 8, 8)
    stop = steps_per_phase + 4                       # inside phase V, after a mid-epoch checkpoint
    with pytest.raises(train.Preempted):
        run(config, str(tmp_path / "cut"), stop_at_step=stop)
    resumed = run(config, str(tmp_path / "cut"))
    full, cut = _prompts(tmp_path / "full"), _prompts(tmp_path / "cut")
    assert full.keys() == cut.keys()
    for key in full:
        np.testing.assert_array_equal(cut[key], full[key], err_msg=key)
    assert resumed["accuracy"] == json.load(open(tmp_path / "full" / "results.json"))["accuracy"]


def test_resuming_with_another_config_is_refused(tmp_path):
    run(tiny_config("zeroshot"), str(tmp_path))
    with pytest.raises(ValueError, match="made by another config.*seed"):
        run(tiny_config("zeroshot", seed=2), str(tmp_path))


def test_unknown_method_is_named(tmp_path):
    config = tiny_config("ivlp")
    config.method = "vpt-deep"
    with pytest.raises(ValueError, match="unknown method 'vpt-deep'"):
        run(config, str(tmp_path))


def test_missing_weights_path_is_named(tmp_path):
    config = tiny_config("aple", backbone__weights="/nonexistent/ViT-B-16")
    with pytest.raises(FileNotFoundError, match="/nonexistent/ViT-B-16.*demo"):
        run(config, str(tmp_path))


def test_real_backbone_without_weights_explains_how_to_get_them(tmp_path):
    from configs import aple
    config = aple.get_config("dataset=OxfordPets")
    with pytest.raises(ValueError, match="needs backbone.weights.*configs/aple.py:demo"):
        run(config, str(tmp_path))


def test_phase_pattern_matching_no_leaf_is_named_before_training(tmp_path):
    config = tiny_config("aple", prompts__vision__depth=0, **SMALL)   # no vision prompts: phase V selects nothing
    with pytest.raises(ValueError, match="'vision/.\\*' matches no prompt leaf"):
        run(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "metrics.jsonl")


@pytest.mark.slow
def test_packed_seeds_match_separate_runs(tmp_path):
    small = dict(dataset__shots=4, batch_size=4, eval_batch_size=16, optim__epochs=2, log_every=2)
    packed = run(tiny_config("ivlp", pack_seeds="1,2", **small), str(tmp_path / "packed"))
    assert [r["seed"] for r in packed] == [1, 2] and all(r["packed_seeds"] == 2 for r in packed)
    for seed in (1, 2):
        alone = run(tiny_config("ivlp", seed=seed, **small), str(tmp_path / f"alone{seed}"))
        a, b = _prompts(tmp_path / "packed" / f"seed{seed}"), _prompts(tmp_path / f"alone{seed}")
        for key in a:
            assert np.linalg.norm(a[key] - b[key]) <= 1e-5 * np.linalg.norm(b[key]), key
        assert json.load(open(tmp_path / "packed" / f"seed{seed}" / "config.json")) == \
            json.load(open(tmp_path / f"alone{seed}" / "config.json"))
        assert alone["evals"]["base"]["num_examples"] == packed[seed - 1]["evals"]["base"]["num_examples"]
