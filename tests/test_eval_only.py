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


# ------------------------------------------------------------------- settings that change logits but not shapes

TREE = {"text": {"ctx": np.zeros((2, 8), np.float32)}}   # the leaves are not looked at: provenance only


def _settings_file(path, config, meta=None):
    """A prompts file recording `config` (or `meta`), without a training run."""
    from aple_jax.prompt_files import prompts_meta, save_prompts
    save_prompts(path, TREE, meta if meta is not None else prompts_meta(config))
    return str(path)


def _provenance(source, config):
    from aple_jax.prompt_files import check_provenance, source_meta
    check_provenance(source, source_meta(source), config, None, None)


@pytest.mark.parametrize("method,arg,key,value", [
    ("clip_lora", "tiny", "lora.alpha", 4.0),                     # the scale alpha / sqrt(rank)
    ("mmrl", "tiny", "mmrl.alpha", 0.5),                          # class and representation logits fused
    ("mmrl", "tiny,plus", "mmrl.beta", 0.3),                      # MMRL++'s token mixing
    ("aple", "tiny", "adapter.sigma", 0.2),                       # the image adapter at test
    ("coop", "tiny,plugin=dept", "dept.weight", 0.2),             # DePT's head share of the base logits
    ("coop", "tiny,plugin=dpc", "dpc.weight", 0.5),               # DPC's parallel prompt P + (M - P) / w
    ("coop", "tiny,plugin=dpc", "dpc.weight_new", 0.5),
])
def test_a_setting_that_changes_logits_is_recorded_and_a_mismatch_refused(tmp_path, method, arg, key, value):
    trained = tiny_config(method, arg)
    path = _settings_file(tmp_path / "prompts.npz", trained)
    stored = read_prompts_meta(path)["config"][key]
    _provenance(path, tiny_config(method, arg))                    # the same values: accepted
    with pytest.raises(ValueError, match=f"prompts in {re.escape(path)} were trained with other settings, which "
                                         f"change their logits \\({re.escape(key)}: trained {stored!r}, now "
                                         f"{value!r}\\)") as info:
        _provenance(path, tiny_config(method, arg, **{key.replace(".", "__"): value}))
    assert f"{key}={stored!r}" in info.value.hint


def test_mmrl_plus_token_mixing_is_checked_only_where_it_mixes(tmp_path):
    plain = _settings_file(tmp_path / "plain.npz", tiny_config("mmrl", "tiny"))
    _provenance(plain, tiny_config("mmrl", "tiny", mmrl__beta=0.3))        # plain MMRL: beta has no effect
    with pytest.raises(ValueError, match="other settings, which change their logits \\(mmrl.plus: trained False, "
                                         "now True\\)"):
        _provenance(plain, tiny_config("mmrl", "tiny,plus"))
    plus = _settings_file(tmp_path / "plus.npz", tiny_config("mmrl", "tiny,plus"))
    with pytest.raises(ValueError, match="mmrl.beta: trained 0.9, now 0.3\\)"):
        _provenance(plus, tiny_config("mmrl", "tiny,plus", mmrl__beta=0.3))


def test_a_plugins_settings_count_at_their_defaults_and_only_while_it_is_on(tmp_path):
    from aple_jax.prompt_files import prompt_config
    on = tiny_config("coop", "tiny,plugin=dpc")
    with on.unlocked():
        del on["dpc"]                                  # `--config.plugin=dpc` alone: the plug-in's defaults
    assert prompt_config(on)["dpc.weight"] == 0.2 and prompt_config(on)["dpc.decoupled"] == ["text/ctx"]
    path = _settings_file(tmp_path / "prompts.npz", on)
    _provenance(path, tiny_config("coop", "tiny,plugin=dpc"))
    off = tiny_config("coop", "tiny,plugin=dpc", dpc__weight=0.9)
    off.plugin = ""                                    # DPC's stage-1 check: the section stays, the plug-in is off
    assert not any(k.startswith("dpc.") for k in prompt_config(off))


def test_files_recorded_before_the_settings_are_held_to_their_run_config_or_load_unchecked(tmp_path):
    from aple_jax.prompt_files import PROMPT_KEYS, prompts_meta
    trained = tiny_config("clip_lora", lora__alpha=2.0)
    meta = prompts_meta(trained)
    meta["config"] = {k: v for k, v in meta["config"].items() if k.startswith(PROMPT_KEYS)}   # the old record
    with_run_config = _settings_file(tmp_path / "a.npz", None, meta)
    _provenance(with_run_config, tiny_config("clip_lora", lora__alpha=2.0))
    with pytest.raises(ValueError, match="lora.alpha: trained 2.0, now 1.0"):
        _provenance(with_run_config, tiny_config("clip_lora"))
    del meta["run_config"]                             # before prompts files recorded their run's config
    older = _settings_file(tmp_path / "b.npz", None, meta)
    _provenance(older, tiny_config("clip_lora"))       # nothing recorded to hold it to
    with pytest.raises(ValueError, match="another method/backbone/prompt shape \\(method: trained 'clip_lora'"):
        _provenance(older, tiny_config("mma"))         # what it records is still checked


def test_a_run_directorys_settings_come_from_its_config_json(tmp_path):
    from aple_jax import paths
    paths.write_json_atomic(tmp_path / "config.json", tiny_config("mmrl").to_dict())
    with pytest.raises(ValueError, match=f"prompts in {re.escape(str(tmp_path))} .*mmrl.alpha: trained 0.7, now 0.2"):
        _provenance(str(tmp_path), tiny_config("mmrl", mmrl__alpha=0.2))
