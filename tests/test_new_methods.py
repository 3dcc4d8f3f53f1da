"""The methods built on the tower mechanisms (CLIP-LoRA, ...): parameter counts at ViT-B/16, learning on a tiny
CLIP with the frozen CLIP bit-identical, the official recipe in the config, exact resume with a random stream."""
import json
import os

import jax
import numpy as np
import pytest

from aple_jax import prompts as P
from aple_jax import train
from aple_jax.clip import model as clip_model
from aple_jax.clip.backbone import Backbone, load_backbone
from aple_jax.clip.tokenizer import Tokenizer
from aple_jax.methods import build_method
from aple_jax.run import run
from tests.helpers import random_batch, tiny_config
from tests.test_methods import _b16_count

CLASSES = [f"class {i}" for i in range(6)]


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny", "")


def test_trainable_parameter_counts_at_vit_b16():
    """docs/methods.md's formulas, from the built trees."""
    assert _b16_count("clip_lora") == 2 * 2 * 3 * 12 * (512 + 768) == 184_320
    per_block = (2 * 512 * 32 + 32 + 512) + (2 * 768 * 32 + 32 + 768) + (32 * 32 + 32)
    assert _b16_count("mma") == 8 * per_block == 674_560
    from configs import twostage
    backbone = Backbone(clip_model.CLIP(clip_model.get_config("ViT-B/16")))
    abstract = jax.eval_shape(lambda: clip_model.init_params(backbone.cfg))
    method = build_method(twostage.get_config(""), backbone, Tokenizer.builtin_tiny())
    shapes = jax.eval_shape(lambda p: method.init(jax.random.key(0), p, [f"c{i}" for i in range(50)]), abstract)
    assert P.count_params(shapes) == 2 * 2 * 12 * (512 + 768) + 50 * 512 == 61_440 + 25_600


def train_steps(tiny, name: str, steps: int, **overrides):
    """(first CE, last CE, prompts before, prompts after, CLIP params before (host copies), after) of `steps`."""
    backbone, params, tokenizer = tiny
    config = tiny_config(name, **overrides)
    method = build_method(config, backbone, tokenizer)
    prompts = method.init(jax.random.key(0), params, CLASSES)
    frozen_before = jax.tree.map(np.array, params)
    phase = train.resolve_iterations(method.phases(), 1000)[0]
    plan = train.plan_phase(method, phase, prompts)
    tx = train.make_optimizer(phase, plan.selection.labels(prompts), 1000, config.optim)
    state = train.init_state(prompts, tx, False, jax.random.key(1) if method.needs_rng else None)
    texts = method.class_texts(params, CLASSES, "a photo of a {}.")
    consts = train.phase_constants(method, plan, prompts, params, texts, None)
    step = train.make_train_step(method, plan, tx)
    batch = random_batch(8, 32, len(CLASSES))
    ces = []
    for _ in range(steps):
        state, metrics = step(state, params, consts, batch)
        ces.append(float(metrics["ce"]))
    assert step._cache_size() == 1
    return ces, prompts, state.prompts, frozen_before, params


@pytest.mark.parametrize("name", ["clip_lora", "mma", "twostage"])
def test_learns_and_leaves_clip_bit_identical(tiny, name):
    ces, before, after, frozen_before, params = train_steps(tiny, name, 20)
    assert ces[-1] < 0.8 * ces[0], ces
    jax.tree.map(np.testing.assert_array_equal, params, frozen_before)
    trained = [p for p in P.flatten(after) if not p.startswith("head/")]   # 2SFS's head trains in its second phase
    moved = {p: not np.array_equal(P.flatten(after)[p], P.flatten(before)[p]) for p in trained}
    assert all(moved.values()), [p for p, m in moved.items() if not m]   # gradients reach every trained leaf


@pytest.mark.parametrize("name", ["clip_lora", "mma", "twostage"])
def test_the_initial_tree_gives_plain_clip_bit_for_bit(tiny, name):
    backbone, params, tokenizer = tiny
    method = build_method(tiny_config(name), backbone, tokenizer)
    tree = method.init(jax.random.key(0), params, CLASSES)
    images = random_batch(4, 32, 2)["image"]
    texts = method.class_texts(params, CLASSES, "a photo of a {}.")
    if name == "mma":   # the adapters start live: a zero scale gives plain CLIP
        method.scale = 0.0
    img = jax.jit(method.image_features)(tree, params, images)
    txt = jax.jit(method.text_features)(tree, params, texts)
    assert np.array_equal(img, jax.jit(backbone.image)(params, images))
    assert np.array_equal(txt, jax.jit(backbone.text)(params, texts.embeds, texts.eot_idx))


def test_twostage_head_starts_at_the_text_features_and_scores_base_only(tiny):
    backbone, params, tokenizer = tiny
    method = build_method(tiny_config("twostage"), backbone, tokenizer)
    tree = method.init(jax.random.key(0), params, CLASSES)
    texts = method.class_texts(params, CLASSES, "a photo of a {}.")
    images = random_batch(4, 32, 2)["image"]
    side = method.text_features(tree, params, texts)
    logits = lambda t, split: np.asarray(method.eval_logits(t, params, side, images, split))
    np.testing.assert_array_equal(logits(tree, "base"), logits(tree, "new"))   # zero head: the text tower
    tree = method.begin_phase(1, tree, params, texts)
    np.testing.assert_allclose(logits(tree, "base"), logits(tree, "new"), rtol=1e-5, atol=1e-4)
    moved = {**tree, "head": {"classifier": tree["head"]["classifier"].at[0].multiply(-1.0)}}
    assert not np.allclose(logits(moved, "base"), logits(tree, "base"))        # base: the head
    np.testing.assert_array_equal(logits(moved, "new"), logits(tree, "new"))   # new: the adapted text tower
    np.testing.assert_array_equal(logits(moved, "ImageNetV2"), logits(tree, "new"))


def test_clip_lora_recipe_and_tree():
    from configs import clip_lora
    c = clip_lora.get_config("dataset=DTD")
    assert (c.lora.rank, c.lora.alpha, c.lora.dropout, tuple(c.lora.matrices)) == (2, 1.0, 0.25,
                                                                                   ("query", "key", "value"))
    assert (c.optim.name, c.optim.lr, c.optim.weight_decay, c.optim.schedule, c.optim.min_lr, c.batch_size) == (
        "adamw", 2e-4, 1e-2, "cosine_step", 1e-6, 32)
    backbone, params, tokenizer = load_backbone("tiny", "")
    method = build_method(c, backbone, tokenizer)
    assert method.scale == pytest.approx(2 ** -0.5)   # alpha / sqrt(r), as the official loralib
    phase = method.phases()[0]
    assert phase.iterations == 500 * 16
    # DTD's 24 base classes x 16 shots at batch 32: 12 steps per epoch, 8000 steps = 667 epochs
    assert train.resolve_iterations([phase], train.steps_per_epoch(24 * 16, 32))[0].epochs == 667
    tree = method.init(jax.random.key(0), params)
    leaves = P.flatten(tree)
    assert set(leaves) == {f"{t}/block_{i}/{m}/{ab}" for t in ("text", "vision") for i in range(2)
                           for m in ("query", "key", "value") for ab in "ab"}
    assert all(not np.any(v) for p, v in leaves.items() if p.endswith("/b"))   # B = 0: starts at plain CLIP


@pytest.mark.parametrize("name,stop", [("clip_lora", 3), ("twostage", 7)])
def test_interrupted_run_resumes_bit_for_bit(tmp_path, name, stop):
    """CLIP-LoRA's dropout stream comes back from the checkpoint; 2SFS stops inside its head phase (2 + 2 epochs
    of 2 steps), whose start set the head."""
    config = tiny_config(name, dataset__shots=4, batch_size=8, eval_batch_size=16, optim__epochs=2,
                         checkpoint_every_steps=2, log_every=2)
    run(config, str(tmp_path / "full"))
    with pytest.raises(train.Preempted):
        run(config, str(tmp_path / "cut"), stop_at_step=stop)
    resumed = run(config, str(tmp_path / "cut"))
    with np.load(tmp_path / "full" / "prompts.npz") as f, np.load(tmp_path / "cut" / "prompts.npz") as g:
        for key in f.files:
            np.testing.assert_array_equal(g[key], f[key], err_msg=key)
    full = json.load(open(tmp_path / "full" / "results.json"))
    assert resumed["accuracy"] == full["accuracy"]
    assert os.listdir(tmp_path / "cut" / "checkpoints")


def test_a_run_scores_each_evaluation_set_under_its_split_name(tmp_path, monkeypatch):
    from aple_jax import evaluate
    seen, real = [], evaluate.evaluate_batches
    monkeypatch.setattr(evaluate, "evaluate_batches", lambda *a, **k: seen.append(k.get("split")) or real(*a, **k))
    run(tiny_config("zeroshot"), str(tmp_path))
    assert seen == ["base", "new"]
