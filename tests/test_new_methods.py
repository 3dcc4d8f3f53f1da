"""The methods built on the tower mechanisms (CLIP-LoRA, ...): parameter counts at ViT-B/16, learning on a tiny
CLIP with the frozen CLIP bit-identical, the official recipe in the config, exact resume with a random stream."""
import json
import os

import jax
import numpy as np
import pytest

from aple_jax import losses as L
from aple_jax import prompts as P
from aple_jax import train
from aple_jax.clip import model as clip_model
from aple_jax.clip.backbone import Backbone, load_backbone
from aple_jax.clip.mods import TowerMods
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
    mmrl = lambda rep_dim: 5 * rep_dim + 7 * (rep_dim * 512 + 512) + 7 * (rep_dim * 768 + 768) + 768 * 512
    assert _b16_count("mmrl") == mmrl(512) == 4_992_256
    assert _b16_count("mmrl", "dataset=EuroSAT") == mmrl(2048) == 18_762_496
    # MMRL++: shared projection + 7 rank-4 residuals with biases per tower, CLIP's proj + a rank-64 residual
    plus = 5 * 512 + (512 * 512 + 7 * (512 * 4 + 4 * 512 + 512)) + (512 * 768 + 7 * (768 * 4 + 4 * 512 + 768)) \
        + 768 * 64 + 64 * 512
    assert _b16_count("mmrl", "plus") == _b16_count("mmrl", "dataset=EuroSAT,plus") == plus == 813_312


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
    teacher = backbone.text(params, texts.embeds, texts.eot_idx) if plan.needs_teacher_text else None
    consts = train.phase_constants(method, plan, prompts, params, texts, teacher)
    step = train.make_train_step(method, plan, tx)
    batch = random_batch(8, 32, len(CLASSES))
    ces = []
    for _ in range(steps):
        state, metrics = step(state, params, consts, batch)
        ces.append(float(metrics["ce"]))
    assert step._cache_size() == 1
    return ces, prompts, state.prompts, frozen_before, params


@pytest.mark.parametrize("name", ["clip_lora", "mma", "twostage", "mmrl"])
def test_learns_and_leaves_clip_bit_identical(tiny, name):
    ces, before, after, frozen_before, params = train_steps(tiny, name, 20)
    assert ces[-1] < 0.8 * ces[0], ces
    jax.tree.map(np.testing.assert_array_equal, params, frozen_before)
    trained = [p for p in P.flatten(after) if not p.startswith("head/")]   # 2SFS's head trains in its second phase
    moved = {p: not np.array_equal(P.flatten(after)[p], P.flatten(before)[p]) for p in trained}
    assert all(moved.values()), [p for p, m in moved.items() if not m]   # gradients reach every trained leaf


@pytest.mark.parametrize("name", ["clip_lora", "mma", "twostage", "mmrl"])
def test_the_initial_tree_gives_plain_clip_bit_for_bit(tiny, name):
    backbone, params, tokenizer = tiny
    method = build_method(tiny_config(name), backbone, tokenizer)
    tree = method.init(jax.random.key(0), params, CLASSES)
    images = random_batch(4, 32, 2)["image"]
    texts = method.class_texts(params, CLASSES, "a photo of a {}.")
    if name == "mma":   # the adapters start live: a zero scale gives plain CLIP
        method.scale = 0.0
    if name == "mmrl":  # the tokens start live: absent tokens give plain CLIP
        tree = {k: v for k, v in tree.items() if k != "rep_tokens"}
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


@pytest.mark.parametrize("name,stop", [("clip_lora", 3), ("twostage", 7), ("mmrl", 3)])
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


# ------------------------------------------------------------------------------------------------------- MMRL

def _mmrl(tiny, **overrides):
    backbone, params, tokenizer = tiny
    method = build_method(tiny_config("mmrl", **overrides), backbone, tokenizer)
    tree = method.init(jax.random.key(0), params, CLASSES)
    return method, tree, method.class_texts(params, CLASSES, "a photo of a {}.")


def _tokens(tree, tower: str, k: int):
    proj = tree[tower][f"{'r2t' if tower == 'text' else 'r2v'}proj_{k}"]
    return tree["rep_tokens"] @ proj["kernel"] + proj["bias"]


def test_mmrl_recipe_and_tree(tiny):
    from configs import mmrl
    c = mmrl.get_config("dataset=OxfordPets")
    assert (c.optim.name, c.optim.lr, c.optim.epochs, c.optim.weight_decay, c.optim.warmup_epochs,
            c.optim.warmup_lr, c.batch_size, tuple(c.dataset.crop_scale)) == ("adamw", 1e-3, 10, 5e-4, 1, 1e-5, 4,
                                                                              (0.5, 1.0))
    assert dict(c.mmrl) == dict(n_tokens=5, rep_dim=512, start=6, alpha=0.7, reg_weight=0.2, plus=False, beta=0.9,
                                res_rank=4, proj_rank=64)
    assert (mmrl.get_config("dataset=dtd").mmrl.reg_weight, mmrl.get_config("dataset=world:WorldScenes").mmrl
            .reg_weight) == (6.0, 1.0)
    euro = mmrl.get_config("dataset=EuroSAT")
    assert (euro.mmrl.rep_dim, euro.mmrl.reg_weight) == (2048, 0.01)
    imnet = mmrl.get_config("dataset=ImageNet")
    assert (imnet.optim.epochs, imnet.batch_size, imnet.mmrl.reg_weight) == (5, 32, 0.5)
    few = mmrl.get_config("dataset=Caltech101,fewshot")
    assert (few.optim.epochs, few.batch_size, few.mmrl.reg_weight) == (50, 32, 0.5)
    xd = mmrl.get_config("xd")   # the table's ImageNet 0.5 wins over the cross-dataset 0.2, as in the official code
    assert (xd.optim.epochs, xd.optim.warmup_epochs, xd.batch_size, xd.mmrl.reg_weight) == (1, 0, 32, 0.5)
    assert mmrl.get_config("demo").mmrl.start == 3
    backbone, params, tokenizer = tiny
    method, tree, _ = _mmrl(tiny)
    assert [(t, w) for t, w in method.phases()[0].losses] == [("ce", 0.7), ("ce_rep", pytest.approx(0.3)),
                                                              ("reg_image", 1.0), ("reg_text", 1.0)]
    leaves = P.flatten(tree)
    assert set(leaves) == {"rep_tokens", "vision/proj_rep"} | {f"{t}/{p}proj_{k}/{w}" for t, p in (("text", "r2t"),
                           ("vision", "r2v")) for k in range(2) for w in ("kernel", "bias")}
    for t, p in (("text", "r2t"), ("vision", "r2v")):   # per-block copies of one layer, as `_get_clones` makes
        jax.tree.map(np.testing.assert_array_equal, tree[t][f"{p}proj_0"], tree[t][f"{p}proj_1"])
    with pytest.raises(ValueError, match="mmrl.alpha and mmrl.reg_weight"):
        _mmrl(tiny, loss_weights={"ce": 0.7})
    with pytest.raises(ValueError, match="mmrl.start=3"):
        _mmrl(tiny, mmrl__start=3)


def test_mmrl_towers_take_the_projected_tokens_and_logits_follow_the_split(tiny):
    """Every block from `start` sees its own projection of the tokens; base (and all classes, and the transfer
    source) scores alpha * class + (1 - alpha) * representation logits, new classes and targets class logits."""
    backbone, params, _ = tiny
    method, tree, texts = _mmrl(tiny)
    tree = {**tree, "vision": {**tree["vision"], "r2vproj_1": jax.tree.map(lambda v: -v, tree["vision"]["r2vproj_1"])}}
    images = random_batch(4, 32, 2)["image"]

    @jax.jit
    def by_hand(tree):
        vision = TowerMods(inserted=[_tokens(tree, "vision", k) for k in range(2)], inserted_from=0,
                           inserted_proj=tree["vision"]["proj_rep"])
        text = TowerMods(inserted=[_tokens(tree, "text", k) for k in range(2)], inserted_from=0)
        return (*backbone.image(params, images, mods=vision),
                backbone.text(params, texts.embeds, texts.eot_idx, mods=text))

    img, rep, txt = by_hand(tree)
    np.testing.assert_array_equal(method.text_features_jit(tree, params, texts), txt)
    scale = backbone.logit_scale(params)
    cls, rep_logits = L.cosine_logits(scale, img, txt), L.cosine_logits(scale, rep, txt)
    eval_logits = jax.jit(method.eval_logits, static_argnums=4)
    logits = lambda t, split, side=txt: np.asarray(eval_logits(t, params, side, images, split))
    for split in ("base", "all", "synthetic"):   # "synthetic": the transfer source, the tiny config's dataset
        np.testing.assert_allclose(logits(tree, split), 0.7 * cls + 0.3 * rep_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits(tree, "new"), cls, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(logits(tree, "ImageNetV2"), logits(tree, "new"))
    assert not np.allclose(logits(tree, "base"), logits(tree, "new"))
    plain = {k: v for k, v in tree.items() if k != "rep_tokens"}   # absent tokens: plain CLIP on every split
    side = method.text_features_jit(plain, params, texts)
    np.testing.assert_array_equal(side, jax.jit(backbone.text)(params, texts.embeds, texts.eot_idx))
    zs = jax.jit(lambda p, x, s: L.cosine_logits(backbone.logit_scale(p), backbone.image(p, x), s))(params, images,
                                                                                                     side)
    for split in ("base", "new"):
        np.testing.assert_array_equal(logits(plain, split, side), zs)


def test_mmrl_loss_is_weighted_ce_on_both_logits_plus_cosine_regularisers_to_frozen_clip(tiny):
    backbone, params, _ = tiny
    method, tree, texts = _mmrl(tiny, mmrl__reg_weight=2.0)
    plan = train.plan_phase(method, method.phases()[0], tree)
    assert plan.needs_teacher_text and plan.needs_teacher_image and not plan.cache_text
    teacher_text = backbone.text(params, texts.embeds, texts.eot_idx)
    consts = train.phase_constants(method, plan, tree, params, texts, teacher_text)
    batch = random_batch(4, 32, len(CLASSES))
    total, m = jax.jit(train.make_loss_fn(method, plan))(P.flatten(tree), {}, params, consts, batch)
    img, rep = method.image_outputs(tree, params, batch["image"])
    txt = method.text_features(tree, params, texts)
    scale = backbone.logit_scale(params)
    np.testing.assert_allclose(m["ce"], L.cross_entropy(L.cosine_logits(scale, img, txt), batch["label"]), rtol=1e-5)
    np.testing.assert_allclose(m["ce_rep"], L.cross_entropy(L.cosine_logits(scale, rep, txt), batch["label"]),
                               rtol=1e-5)
    cos = lambda a, b: (L.normalize(a) * L.normalize(b)).sum(-1)
    np.testing.assert_allclose(m["reg_image"], 1 - cos(img, backbone.image(params, batch["image"])).mean(), rtol=1e-4)
    np.testing.assert_allclose(m["reg_text"], 1 - cos(txt, teacher_text).mean(), rtol=1e-4)
    assert min(float(m["reg_image"]), float(m["reg_text"]), float(m["ce_rep"])) > 0
    np.testing.assert_allclose(total, 0.7 * m["ce"] + 0.3 * m["ce_rep"] + 2.0 * (m["reg_image"] + m["reg_text"]),
                               rtol=1e-6)


def test_mmrl_plus_recipe_tree_and_learning(tiny):
    """MMRL++: blended tokens, shared projection plus zero residuals (every block starts with the same tokens),
    CLIP's own proj for the representation features at the start; it learns and leaves CLIP bit-identical."""
    from configs import mmrl
    c = mmrl.get_config("dataset=OxfordPets,plus")
    assert (c.mmrl.plus, c.mmrl.beta, c.mmrl.reg_weight, c.mmrl.rep_dim, c.mmrl.res_rank, c.mmrl.proj_rank,
            c.tag) == (True, 0.7, 0.01, 512, 4, 64, "plus")
    few = mmrl.get_config("dataset=dtd,fewshot,plus")
    assert (few.optim.lr, few.optim.epochs, few.batch_size, few.mmrl.beta, few.mmrl.reg_weight) == (2e-3, 100, 32,
                                                                                                     0.9, 7.0)
    xd = mmrl.get_config("xd,plus")
    assert (xd.mmrl.beta, xd.mmrl.reg_weight, xd.optim.epochs) == (0.9, 0.1, 1)
    backbone, params, _ = tiny
    method, tree, _ = _mmrl(tiny, mmrl__plus=True, mmrl__beta=0.5)
    mods = method.mods(tree, params, "vision", ("text", "vision"))
    assert mods.inserted_beta == 0.5
    np.testing.assert_array_equal(mods.inserted_proj, params["visual"]["proj"]["kernel"])
    np.testing.assert_array_equal(mods.inserted[0], mods.inserted[1])
    ces, before, after, frozen_before, params = train_steps(tiny, "mmrl", 20, mmrl__plus=True, mmrl__beta=0.5)
    assert ces[-1] < 0.8 * ces[0], ces
    jax.tree.map(np.testing.assert_array_equal, params, frozen_before)
    moved = {p: not np.array_equal(P.flatten(after)[p], P.flatten(before)[p]) for p in P.flatten(after)}
    assert all(moved.values()), [p for p, m in moved.items() if not m]
