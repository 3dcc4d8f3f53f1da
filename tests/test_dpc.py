"""The DPC plug-in: the hard-negative sampler against the official loop, stage 2's start, the mixing weights at test,
learning with CLIP bit-identical, trainable counts at ViT-B/16, exact resume inside stage 2."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from aple_jax import evaluate, train
from aple_jax import prompts as P
from aple_jax.clip.backbone import load_backbone
from aple_jax.errors import CheckpointError
from aple_jax.methods import build_method
from aple_jax.plugins import dpc
from aple_jax.run import run
from tests.helpers import random_batch, tiny_config

CLASSES = [f"class {i}" for i in range(6)]


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny", "")


def dpc_config(name: str, arg: str = "tiny", **overrides) -> ml_collections.ConfigDict:
    return tiny_config(name, f"{arg},plugin=dpc", **overrides)


def official_negatives(scores: np.ndarray, labels: np.ndarray, top_k: int, picked: list[list[int]],
                       usable: np.ndarray) -> list[list[int]]:
    """JREion/DPC's `parse_sple_batch_train`: per sample the top-k classes but the label, those not yet in the
    batch, then random classes not in the batch up to 2 (here: checked against the `picked` ones, whose draws are
    ours)."""
    in_batch, out = list(labels), []
    for s, y, ours in zip(scores, labels, picked):
        before = [int(i) for i in np.argsort(-s, kind="stable")[:top_k] if i != y]
        chosen = [i for i in before if i not in in_batch]
        fill = ours[len(chosen):]
        free = sum(1 for c in range(len(usable)) if usable[c] and c not in in_batch + chosen)
        assert len(fill) == min(max(2 - len(chosen), 0), free)
        assert all(c not in in_batch + chosen and usable[c] for c in fill)
        in_batch += chosen + fill
        out.append(chosen + fill)
    return out


def test_sampler_matches_the_official_loop_and_picks_training_images_of_its_classes():
    rng = np.random.default_rng(0)
    num_classes, batch, top_k = 12, 4, 4
    image_labels = np.repeat(np.arange(num_classes), 3)
    image_labels = image_labels[image_labels != 7]                  # class 7 has no training image
    members, counts = dpc.image_table(image_labels, num_classes)
    scores = rng.normal(size=(batch, num_classes)).astype(np.float32)
    labels = np.array([0, 3, 3, 5], np.int32)
    usable = jnp.asarray(counts > 0)
    sample = jax.jit(lambda key: dpc.hard_negatives(jnp.asarray(scores), jnp.asarray(labels), usable, top_k, 2, key),
                     )
    classes, valid = map(np.asarray, sample(jax.random.key(0)))
    picked = [classes[b][valid[b]].tolist() for b in range(batch)]
    assert picked == official_negatives(np.where(counts > 0, scores, -np.inf), labels, top_k, picked, counts > 0)
    negatives = classes[valid]
    assert len(set(negatives.tolist())) == len(negatives)                     # no class twice in the batch
    assert not set(negatives.tolist()) & set(labels.tolist()) and 7 not in negatives
    images = np.asarray(dpc.pick_images(jnp.asarray(members), jnp.asarray(counts), jnp.asarray(classes),
                                        jax.random.key(1)))
    np.testing.assert_array_equal(image_labels[images][valid], classes[valid])   # training images of those classes
    again = np.asarray(dpc.pick_images(jnp.asarray(members), jnp.asarray(counts), jnp.asarray(classes),
                                       jax.random.key(1)))
    np.testing.assert_array_equal(again, images)                              # the same draws per key
    other = [np.asarray(dpc.pick_images(jnp.asarray(members), jnp.asarray(counts), jnp.asarray(classes),
                                        jax.random.key(k))) for k in range(2, 6)]
    assert any(not np.array_equal(o, images) for o in other)
    np.testing.assert_array_equal(np.asarray(sample(jax.random.key(0))[0]), classes)


def test_symmetric_contrastive_ignores_the_masked_pairs():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(5, 5)), jnp.float32)
    valid = jnp.asarray([True, True, False, True, False])
    keep = np.array([0, 1, 3])
    sub = logits[keep][:, keep]
    ids = jnp.arange(3)
    expected = (-(jax.nn.log_softmax(sub, -1)[ids, ids]).mean() - (jax.nn.log_softmax(sub.T, -1)[ids, ids]).mean()) / 2
    np.testing.assert_allclose(dpc.symmetric_contrastive(logits, valid), expected, rtol=1e-6)
    grads = jax.grad(lambda x: dpc.symmetric_contrastive(x, valid))(logits)
    assert np.all(np.isfinite(grads)) and not np.any(np.asarray(grads)[2]) and not np.any(np.asarray(grads)[:, 4])


def stage2_tree(method, params, texts, seed: int = 0):
    """A tree as stage 2 starts after a stage 1 that moved every leaf, and then one whose trained leaves moved."""
    tree = method.init(jax.random.key(0), params, CLASSES)
    noise = jax.random.key(seed + 7)
    base = dpc.base_tree(tree)
    moved = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(noise, x.shape), base)
    start = method.begin_phase(len(method.phases()) - 1, {**tree, **moved}, params, texts)
    trained = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(seed + 9), x.shape),
                           dpc.base_tree(start))
    return moved, start, {**start, **trained}


@pytest.mark.parametrize("name", ["maple"])
def test_stage2_starts_from_stage1_prompts_exactly(tiny, name):
    backbone, params, tokenizer = tiny
    method = build_method(dpc_config(name), backbone, tokenizer)
    texts = method.class_texts(params, CLASSES, "")
    stage1, start, _ = stage2_tree(method, params, texts)
    jax.tree.map(np.testing.assert_array_equal, dpc.base_tree(start), stage1)
    jax.tree.map(np.testing.assert_array_equal, start["dpc"]["stage1"], stage1)
    jax.tree.map(np.testing.assert_array_equal, method.parallel(start), stage1)     # P' = P at the start
    assert float(start["dpc"]["started"]) == 1.0


@pytest.mark.parametrize("name", ["promptsrc", "maple", "aple"])
def test_weight_new_zero_gives_the_base_methods_logits_bit_for_bit(tiny, name):
    backbone, params, tokenizer = tiny
    method = build_method(dpc_config(name), backbone, tokenizer)
    base_method = build_method(tiny_config(name), backbone, tokenizer)
    texts = method.class_texts(params, CLASSES, "")
    stage1, _, tree = stage2_tree(method, params, texts)
    images = random_batch(4, 32, 2)["image"]

    def logits(m, prompts, split):
        side = evaluate.class_side(m, prompts, params, CLASSES, "")
        return np.asarray(jax.jit(evaluate.test_logits, static_argnums=(0, 5))(m, prompts, params, side, images,
                                                                                 split))

    assert method.dpc["weight_new"] == 0.0
    for split in ("new", "ImageNetV2"):
        np.testing.assert_array_equal(logits(method, tree, split), logits(base_method, stage1, split))
    np.testing.assert_allclose(logits(method, tree, "base"), logits(base_method, method.parallel(tree), "base"),
                               rtol=1e-5, atol=1e-5)   # P' computed inside the compiled step: rounding apart
    assert not np.allclose(logits(method, tree, "base"), logits(base_method, stage1, "base"))


def test_parallel_prompt_decouples_the_mixed_one(tiny):
    backbone, params, tokenizer = tiny
    method = build_method(dpc_config("promptsrc", dpc__weight_new=0.5), backbone, tokenizer)
    texts = method.class_texts(params, CLASSES, "")
    stage1, _, tree = stage2_tree(method, params, texts)
    parallel, w = method.parallel(tree), method.dpc["weight"]
    m, p = tree["text"]["ctx"], stage1["text"]["ctx"]
    np.testing.assert_allclose(parallel["text"]["ctx"], (m - (1 - w) * p) / w, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(parallel["vision"]["shallow"], tree["vision"]["shallow"])   # not decoupled
    mixed = method.mixed(tree, 0.5)
    np.testing.assert_allclose(mixed["text"]["ctx"], 0.5 * parallel["text"]["ctx"] + 0.5 * p, rtol=1e-5, atol=1e-6)


def test_stage2_learns_with_clip_and_stage1_prompts_bit_identical(tiny):
    backbone, params, tokenizer = tiny
    config = dpc_config("promptsrc", dpc__top_k=3, dpc__lr=0.05, optim__warmup_epochs=0)
    method = build_method(config, backbone, tokenizer)
    texts = method.class_texts(params, CLASSES, "")
    _, tree, _ = stage2_tree(method, params, texts)
    phase = method.phases()[-1]
    plan = train.plan_phase(method, phase, tree)
    assert set(plan.selection.leaves) == set(P.flatten(dpc.base_tree(tree)))
    tx = train.make_optimizer(phase, plan.selection.labels(tree), 1000, config.optim)
    rng = np.random.default_rng(3)
    patterns = rng.normal(size=(len(CLASSES), 32, 32, 3))     # images of a class alike: there is something to learn
    pool_labels = np.repeat(np.arange(len(CLASSES)), 4)
    pool = patterns[pool_labels] + 0.3 * rng.normal(size=(len(pool_labels), 32, 32, 3))
    members, counts = dpc.image_table(pool_labels, len(CLASSES))
    images = {"images": jnp.asarray(pool, jnp.float16), "members": members, "counts": counts}
    consts = train.phase_constants(method, plan, tree, params, texts, None, None, images)
    batch = {"image": jnp.asarray(pool[[0, 5, 9, 14]], jnp.float32), "label": jnp.asarray(pool_labels[[0, 5, 9, 14]]),
             "index": jnp.arange(4)}
    loss_fn = jax.jit(train.make_loss_fn(method, plan))

    def loss(prompts):   # one fixed draw of hard negatives and their images
        return float(loss_fn(*P.split(prompts, plan.selection.leaves), params, consts, batch,
                             jax.random.key(5))[0])

    before, frozen_before = loss(tree), jax.tree.map(np.array, params)
    stage1_before = jax.tree.map(np.array, tree["dpc"])
    state = train.init_state(jax.tree.map(jnp.copy, tree), tx, False, jax.random.key(1))
    step = train.make_train_step(method, plan, tx)
    for _ in range(20):
        state, metrics = step(state, params, consts, batch)
    assert step._cache_size() == 1 and np.isfinite(float(metrics["dpc_cl"]))
    assert loss(state.prompts) < 0.9 * before
    jax.tree.map(np.testing.assert_array_equal, params, frozen_before)
    jax.tree.map(np.testing.assert_array_equal, state.prompts["dpc"], stage1_before)
    moved = [p for p, v in P.flatten(dpc.base_tree(state.prompts)).items()
             if not np.array_equal(v, P.flatten(tree)[p])]
    assert sorted(moved) == sorted(plan.selection.leaves)


def test_trainable_parameter_counts_at_vit_b16():
    """Stage 2 trains the base method's leaves (the mixed prompt has the prompt's shape): the base counts."""
    from tests.test_methods import _b16_count
    for name, count in (("coop", 2_048), ("ivlp", 46_080), ("promptsrc", 46_080), ("aple", 46_080),
                        ("maple", 3_555_072)):
        assert _b16_trained(name, "plugin=dpc") == _b16_count(name) == count, name


def _b16_trained(name: str, arg: str) -> int:
    import importlib
    from aple_jax.clip import model as clip_model
    from aple_jax.clip.backbone import Backbone
    from aple_jax.clip.tokenizer import Tokenizer
    config = importlib.import_module(f"configs.{name}").get_config(arg)
    backbone = Backbone(clip_model.CLIP(clip_model.get_config("ViT-B/16")))
    abstract = jax.eval_shape(lambda: clip_model.init_params(backbone.cfg))
    method = build_method(config, backbone, Tokenizer.builtin_tiny())
    shapes = jax.eval_shape(lambda p: method.init(jax.random.key(0), p), abstract)
    leaves = P.select(shapes, method.phases()[-1].train).leaves
    return sum(int(np.prod(v.shape)) for k, v in P.flatten(shapes).items() if k in leaves)


@pytest.mark.slow
def test_a_run_resumes_inside_stage2_bit_for_bit_and_stage1_can_come_from_a_run(tmp_path):
    """promptsrc+dpc on the tiny preset: 2 + 2 epochs of 2 steps, cut at step 7 (inside stage 2); then stage 2 alone
    from the uninterrupted run's stage 1, a finished promptsrc run."""
    common = dict(dataset__shots=4, batch_size=8, eval_batch_size=16, optim__epochs=2, log_every=1)
    config = dpc_config("promptsrc", **common, dpc__epochs=2, dpc__top_k=3, checkpoint_every_steps=1)
    full = run(config, str(tmp_path / "full"))
    assert full["method"] == "promptsrc+dpc" and [r["phase"] for r in full["schedule"]] == ["train", "dpc"]
    with pytest.raises(train.Preempted):
        run(config, str(tmp_path / "cut"), stop_at_step=7)
    resumed = run(config, str(tmp_path / "cut"))
    with np.load(tmp_path / "full" / "prompts.npz") as f, np.load(tmp_path / "cut" / "prompts.npz") as g:
        for key in f.files:
            np.testing.assert_array_equal(g[key], f[key], err_msg=key)
    assert resumed["accuracy"] == full["accuracy"]
    stage1 = run(tiny_config("promptsrc", **common), str(tmp_path / "stage1"))
    with np.load(tmp_path / "full" / "prompts.npz") as f, np.load(tmp_path / "stage1" / "prompts.npz") as g:
        for key in g.files:
            if key != "__meta__":   # stage 1 in the DPC run is the base method's run, bit for bit
                np.testing.assert_array_equal(f[f"dpc/stage1/{key}"], g[key], err_msg=key)
    config.dpc.stage1_from = str(tmp_path / "stage1")
    alone = run(config, str(tmp_path / "alone"))
    assert [r["phase"] for r in alone["schedule"]] == ["dpc"]
    assert alone["accuracy"]["new"] == stage1["accuracy"]["new"]   # weight 0 on new: the stage-1 run's accuracy


def test_a_missing_stage1_run_is_refused_before_anything_loads(tmp_path):
    config = dpc_config("coop", dpc__stage1_from=str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="dpc.stage1_from=.*holds no prompts.npz"):
        run(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_run_beside_its_base_run_takes_stage1_from_it():
    config = dpc_config("promptsrc", base_run="train")
    assert dpc.stage1_from_base_run(config, "/w")[dpc.KEY].stage1_from == "/w/base"
    assert dpc.stage1_from_base_run(dpc_config("promptsrc", base_run="/runs/p"), "/w").dpc.stage1_from == "/runs/p"
    explicit = dpc_config("promptsrc", base_run="train", dpc__stage1_from="/mine")
    assert dpc.stage1_from_base_run(explicit, "/w").dpc.stage1_from == "/mine"
    assert dpc.stage1_from_base_run(dpc_config("promptsrc"), "/w").dpc.stage1_from == ""
    assert config.dpc.stage1_from == ""   # the caller's config is left as it was
