"""End-to-end runs on the synthetic dataset with a tiny random CLIP: results, resume, compilations, bad input."""
import json
import os

import jax
import numpy as np
import pytest

from aple_jax import checkpoint, evaluate, train
from aple_jax import prompts as P
from aple_jax.data.pipeline import eval_loader
from aple_jax.prompt_files import PROMPTS_META_KEY
from aple_jax.run import build_setting, check_workdir_config, run
from tests.helpers import tiny_config

SMALL = dict(dataset__shots=8, batch_size=8, eval_batch_size=16, stage1__epochs=1, stage2__epochs=1,
             log_every=2)


def _prompts(workdir):
    """The prompt leaves of a run's prompts.npz (without its provenance entry)."""
    with np.load(os.path.join(workdir, "prompts.npz")) as f:
        return {k: f[k] for k in f.files if k != PROMPTS_META_KEY}


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
    steps_per_phase = train.steps_per_epoch(5 * 8, 8)   # 5: checkpoints at steps 3, 5 (end of L), 6 (inside V), ...
    stop = steps_per_phase + 3                       # inside phase V, two steps after its mid-epoch checkpoint
    with pytest.raises(train.Preempted):
        run(config, str(tmp_path / "cut"), stop_at_step=stop)
    with checkpoint.RunCheckpoints(str(tmp_path / "cut")) as ckpt:
        last = ckpt.latest_step()
        meta = ckpt.restore_meta(last)
    assert (meta["phase"], meta["epoch"], meta["epoch_step"]) == (1, 0, 1)   # phase V, one step into its epoch
    assert last == stop - 2                          # the restarted run must replay steps 7 and 8 from the data state
    resumed = run(config, str(tmp_path / "cut"))
    full, cut = _prompts(tmp_path / "full"), _prompts(tmp_path / "cut")
    assert full.keys() == cut.keys()
    for key in full:
        np.testing.assert_array_equal(cut[key], full[key], err_msg=key)
    assert resumed["accuracy"] == json.load(open(tmp_path / "full" / "results.json"))["accuracy"]


def test_checkpoint_min_steps_spaces_epoch_end_saves_and_resume_stays_exact(tmp_path, monkeypatch):
    """Epoch-end saves at least `checkpoint_min_steps` apart (the phase's end always saves); a run cut between them
    resumes from the last one to the same prompts bit for bit, also from a run directory whose config.json predates
    the key."""
    saved = []
    real_save = checkpoint.RunCheckpoints.save

    def recording_save(self, step, state, meta):
        saved.append(step)
        real_save(self, step, state, meta)

    monkeypatch.setattr(checkpoint.RunCheckpoints, "save", recording_save)
    config = tiny_config("coop", dataset__shots=8, batch_size=8, eval_batch_size=16, optim__epochs=4,
                         checkpoint_min_steps=12, log_every=5)
    assert train.steps_per_epoch(5 * 8, 8) == 5        # epochs end at steps 5, 10, 15, 20
    run(config, str(tmp_path / "full"))
    assert saved == [15, 20]
    with pytest.raises(train.Preempted):
        run(config, str(tmp_path / "cut"), stop_at_step=18)
    assert saved[2:] == [15]
    path = tmp_path / "cut" / "config.json"
    older = json.loads(path.read_text())
    del older["checkpoint_min_steps"]                  # as written before the key existed
    path.write_text(json.dumps(older))
    run(config, str(tmp_path / "cut"))
    assert saved[3:] == [20]                           # resumed at 15: steps 16-20 replayed, then the phase's end
    full, cut = _prompts(tmp_path / "full"), _prompts(tmp_path / "cut")
    for key in full:
        np.testing.assert_array_equal(cut[key], full[key], err_msg=key)


def test_nan_mid_run_stops_and_keeps_the_last_finite_checkpoint(tmp_path, monkeypatch):
    """Epoch 1 trains at the warm-up lr and is checkpointed; on the first step of epoch 2 the lr overflows the
    prompts while the loss of that step is still finite, and a mid-epoch checkpoint falls due right then."""
    saved = []
    real_save = checkpoint.RunCheckpoints.save

    def recording_save(self, step, state, meta):
        saved.append((step, jax.tree.map(np.array, state)))   # a host copy: the next step donates `state`
        real_save(self, step, state, meta)

    monkeypatch.setattr(checkpoint.RunCheckpoints, "save", recording_save)
    config = tiny_config("ivlp", dataset__shots=4, batch_size=4, eval_batch_size=16, optim__epochs=2,
                         optim__warmup_epochs=1, optim__warmup_lr=1e-5, optim__lr=1e38, log_every=100,
                         checkpoint_every_steps=3)
    per_epoch = train.steps_per_epoch(5 * 4, 4)
    assert (per_epoch + 1) % 3 == 0                  # step 6: the first huge-lr step is followed by a checkpoint
    message = rf"NaN or infinite in phase 'train' \(epoch 2, step {per_epoch + 1}\)"
    with pytest.raises(FloatingPointError, match=message):
        run(config, str(tmp_path))
    assert [step for step, _ in saved] == [3, per_epoch]   # no save after the blow-up
    good_step, good_state = saved[-1]
    good = P.flatten(good_state.prompts)
    assert all(np.isfinite(v).all() for v in good.values())
    with checkpoint.RunCheckpoints(str(tmp_path)) as ckpt:
        assert ckpt.latest_step() == good_step
        assert ckpt.restore_meta(good_step)["epoch"] == 1
        on_disk = P.flatten(ckpt.restore_state(good_step, good_state).prompts)
    assert on_disk.keys() == good.keys()
    for key in good:
        np.testing.assert_array_equal(np.asarray(on_disk[key]), good[key], err_msg=key)
    assert not os.path.exists(tmp_path / "results.json")


def _base_accuracy_before_training(monkeypatch) -> list[float]:
    """Wraps train.fit to evaluate the run's initial prompts on its base test split, just as run() evaluates."""
    untrained = []
    real_fit = train.fit

    def fit(method, phases, prompts, ctx):
        base = next(ev.splits for ev in build_setting(method.config).evals if ev.name == "base")
        batches = eval_loader(base.test, global_batch_size=method.config.eval_batch_size,
                              image_size=method.backbone.cfg.image_resolution, mesh=ctx.mesh)
        untrained.append(evaluate.evaluate_batches(method, prompts[0], ctx.clip_params, list(base.classnames),
                                                   base.template, batches).accuracy)
        return real_fit(method, phases, prompts, ctx)

    monkeypatch.setattr(train, "fit", fit)
    return untrained


@pytest.mark.slow
@pytest.mark.parametrize("method,overrides", [
    ("ivlp", dict(optim__epochs=40, optim__lr=0.02)),
    ("aple", dict(stage1__epochs=1, stage2__epochs=24, optim__lr=0.02)),   # the random CLIP learns in stage II
])
def test_short_run_beats_chance_and_the_untrained_prompts(tmp_path, monkeypatch, method, overrides):
    untrained = _base_accuracy_before_training(monkeypatch)
    config = tiny_config(method, dataset__synthetic__test_per_class=20, log_every=1000, **overrides)
    results = run(config, str(tmp_path))
    chance = 100 / 5                                 # 5 base classes of the synthetic dataset's 10
    base = results["accuracy"]["base"]
    assert results["evals"]["base"]["num_examples"] == 5 * 20
    assert len(untrained) == 1
    assert base >= chance + 15 and base >= untrained[0] + 15, (base, untrained)


def test_resuming_with_another_config_is_refused(tmp_path):
    run(tiny_config("zeroshot"), str(tmp_path))
    with pytest.raises(ValueError, match="made by another config.*seed"):
        run(tiny_config("zeroshot", seed=2), str(tmp_path))


def test_only_process_zero_writes_config_json_and_every_process_checks_it(tmp_path):
    config = tiny_config("coop")
    check_workdir_config(str(tmp_path), config, write=False)    # another host of a multi-host run
    assert not (tmp_path / "config.json").exists()
    check_workdir_config(str(tmp_path), config, write=True)     # process 0
    assert json.loads((tmp_path / "config.json").read_text())["method"] == "coop"
    with pytest.raises(ValueError, match="made by another config"):
        check_workdir_config(str(tmp_path), tiny_config("coop", optim__lr=0.5), write=False)


def test_a_run_directory_from_before_the_optimizer_keys_resumes_only_with_their_old_values(tmp_path):
    config = tiny_config("coop")
    check_workdir_config(str(tmp_path), config)
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in ("name", "betas", "eps", "no_decay", "schedule", "min_lr"):   # as written before they existed
        del saved["optim"][key]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    check_workdir_config(str(tmp_path), config, write=False)
    with pytest.raises(ValueError, match=r"made by another config \(optim.name: 'sgd' -> 'adamw'"):
        check_workdir_config(str(tmp_path), tiny_config("coop", optim__name="adamw"), write=False)


def test_unknown_method_is_named(tmp_path):
    config = tiny_config("ivlp")
    config.method = "vpt-deep"
    with pytest.raises(ValueError, match="method='vpt-deep'; expected one of"):
        run(config, str(tmp_path))


def test_missing_weights_path_is_named(tmp_path):
    config = tiny_config("aple", backbone__weights="/nonexistent/ViT-B-16")
    with pytest.raises(FileNotFoundError, match="/nonexistent/ViT-B-16") as info:
        run(config, str(tmp_path))
    assert "demo" in info.value.hint


def test_real_backbone_without_weights_explains_how_to_get_them(tmp_path):
    from configs import aple
    config = aple.get_config("dataset=OxfordPets")
    with pytest.raises(ValueError, match="needs backbone.weights") as info:
        run(config, str(tmp_path))
    assert "configs/aple.py:demo" in info.value.hint


def test_phase_pattern_matching_no_leaf_is_named_before_training(tmp_path):
    config = tiny_config("aple", prompts__vision__depth=0, **SMALL)   # no vision prompts: phase V selects nothing
    with pytest.raises(ValueError, match="'vision/.\\*' matches no prompt leaf"):
        run(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "metrics.jsonl")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ivlp", "mmrl"])
def test_packed_seeds_match_separate_runs(tmp_path, method):
    small = dict(dataset__shots=4, batch_size=4, eval_batch_size=16, optim__epochs=2, log_every=2)
    packed = run(tiny_config(method, pack_seeds="1,2", **small), str(tmp_path / "packed"))
    assert [r["seed"] for r in packed] == [1, 2] and all(r["packed_seeds"] == 2 for r in packed)
    for seed in (1, 2):
        alone = run(tiny_config(method, seed=seed, **small), str(tmp_path / f"alone{seed}"))
        a, b = _prompts(tmp_path / "packed" / f"seed{seed}"), _prompts(tmp_path / f"alone{seed}")
        # Adam's steps (MMRL) divide by the gradient's running RMS: rounding of near-zero gradients moves further.
        tol = 1e-3 if method == "mmrl" else 1e-5   # seen: 2.7e-4 after 10 steps, losses equal to 3e-6
        for key in a:
            assert np.linalg.norm(a[key] - b[key]) <= tol * np.linalg.norm(b[key]), key
        assert json.load(open(tmp_path / "packed" / f"seed{seed}" / "config.json")) == \
            json.load(open(tmp_path / f"alone{seed}" / "config.json"))
        assert alone["evals"]["base"]["num_examples"] == packed[seed - 1]["evals"]["base"]["num_examples"]


def test_an_mmrl_run_directory_from_before_mmrl_plus_resumes_as_plain_mmrl(tmp_path):
    config = tiny_config("mmrl")
    check_workdir_config(str(tmp_path), config)
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in ("plus", "beta", "res_rank", "proj_rank"):   # as written before MMRL++ existed
        del saved["mmrl"][key]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    check_workdir_config(str(tmp_path), config, write=False)
    config.mmrl.plus = True
    with pytest.raises(ValueError, match=r"made by another config \(mmrl.plus: False -> True"):
        check_workdir_config(str(tmp_path), config, write=False)
