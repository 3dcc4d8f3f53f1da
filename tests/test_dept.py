"""DePT as a plug-in (aple_jax/plugins/dept.py): the head's size at ViT-B/16, its logits only on the classes it was
trained on, its loss mix and learning rate, learning with CLIP bit-identical, and runs with packed seeds that
resume, print beside the base method and name their rows."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aple_jax import config_schema
from aple_jax import losses as L
from aple_jax import plugins
from aple_jax import prompts as P
from aple_jax import train
from aple_jax.clip import model as clip_model
from aple_jax.clip.backbone import Backbone, load_backbone
from aple_jax.clip.tokenizer import Tokenizer
from aple_jax.errors import ConfigError
from aple_jax.methods import build_method
from aple_jax.plugins import dept
from aple_jax.predict import load_classifier
from aple_jax.prompt_files import PROMPTS_META_KEY
from aple_jax.reporting.tables import format_run
from aple_jax.run import run
from tests.helpers import random_batch, tiny_config

CLASSES = [f"class {i}" for i in range(5)]
BASES = plugins.BASES


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny", "")


def with_dept(tiny, name: str, **overrides):
    backbone, params, tokenizer = tiny
    return (build_method(tiny_config(name, **overrides), backbone, tokenizer),
            build_method(tiny_config(name, arg="tiny,plugin=dept", **overrides), backbone, tokenizer))


def test_the_heads_trainable_parameters_at_vit_b16():
    """docs/methods.md: 2 x 2 x 512 channel scales and biases plus a 512 -> C linear layer, on top of the method."""
    from configs import promptsrc
    backbone = Backbone(clip_model.CLIP(clip_model.get_config("ViT-B/16")))
    abstract = jax.eval_shape(lambda: clip_model.init_params(backbone.cfg))
    classes = [f"c{i}" for i in range(500)]   # ImageNet's base classes
    method = build_method(promptsrc.get_config("plugin=dept"), backbone, Tokenizer.builtin_tiny())
    shapes = jax.eval_shape(lambda p: method.init(jax.random.key(0), p, classes), abstract)
    assert P.count_params(shapes[dept.HEAD]) == 2 * 2 * 512 + 513 * 500 == 258_548
    assert P.count_params(shapes) == 46_080 + 258_548


@pytest.mark.parametrize("name", BASES)
def test_new_class_logits_are_the_base_methods_and_base_class_logits_are_fused(tiny, name):
    backbone, params, tokenizer = tiny
    base, plugged = with_dept(tiny, name)
    assert plugged.name == f"{name}+dept"
    tree = plugged.init(jax.random.key(0), params, CLASSES)
    base_tree = base.init(jax.random.key(0), params, CLASSES)
    for path, value in P.flatten(base_tree).items():   # the method's own leaves start as without the plug-in
        np.testing.assert_array_equal(P.flatten(tree)[path], value, err_msg=path)
    tree[dept.HEAD]["linear"] = jax.tree.map(lambda x: x + 0.3, tree[dept.HEAD]["linear"])
    side = base.eval_text_features(tree, params, CLASSES, "")
    images = random_batch(3, 32, len(CLASSES))["image"]
    logits = {s: jax.jit(lambda t, i, m, s=s: m.eval_logits(t, params, side, i, s), static_argnums=2)
              for s in ("new", "base")}
    new_base = logits["new"](tree, images, base)
    np.testing.assert_array_equal(logits["new"](tree, images, plugged), new_base)       # bit for bit
    np.testing.assert_array_equal(logits["base"](tree, images, base), new_base)
    img = plugged.image_features(tree, params, images)
    head = dept.head_logits(tree[dept.HEAD], "film_image", img)
    fused = logits["base"](tree, images, plugged)
    np.testing.assert_allclose(fused, 0.3 * new_base + 0.7 * head, rtol=1e-5, atol=1e-5)
    assert not np.allclose(fused, new_base)


def test_the_settings_are_checked(tiny):
    with pytest.raises(ConfigError, match=r"dept.weight=1.5; expected a number in \[0, 1\].*dept.head_lr_scale=0"):
        config_schema.validate(tiny_config("coop", arg="tiny,plugin=dept", dept__weight=1.5, dept__head_lr_scale=0))


def test_each_phase_trains_the_head_with_the_mixed_losses_at_its_own_rate(tiny):
    base, plugged = with_dept(tiny, "aple")
    for before, after in zip(base.phases(), plugged.phases(), strict=True):
        assert after.train == before.train + ("dept/.*",)
        assert after.weights == {**before.weights, "ce": before.weights["ce"] * (1 - 0.7), "dept": 0.7}
        assert after.lr_scales == (("dept/.*", 6.5),) and after.epochs == before.epochs and after.lr == before.lr
    backbone, params, tokenizer = tiny
    tree = plugged.init(jax.random.key(0), params, CLASSES)
    phase = plugged.phases()[-1]
    grads = jax.tree.map(jnp.ones_like, tree)
    updates = {}
    for scales in ((), phase.lr_scales):
        labels = P.select(tree, phase.train).labels(tree)
        tx = train.make_optimizer(dataclasses.replace(phase, lr_scales=scales), labels, 10, plugged.config.optim)
        updates[scales], _ = tx.update(grads, tx.init(tree), tree)
    flat0, flat1 = P.flatten(updates[()]), P.flatten(updates[phase.lr_scales])
    for path in flat0:
        factor = 6.5 if path.startswith("dept/") else 1.0
        np.testing.assert_allclose(flat1[path], factor * flat0[path], rtol=1e-6, err_msg=path)


def test_the_heads_loss_takes_the_images_and_their_class_texts_as_samples(tiny):
    backbone, params, tokenizer = tiny
    _, plugged = with_dept(tiny, "coop")
    tree = plugged.init(jax.random.key(0), params, CLASSES)
    phase = plugged.phases()[0]
    plan = train.plan_phase(plugged, phase, tree)
    texts = plugged.class_texts(params, CLASSES)
    consts = train.phase_constants(plugged, plan, tree, params, texts, None)
    batch = random_batch(4, 32, len(CLASSES))
    total, metrics = train.make_loss_fn(plugged, plan)(P.flatten(tree), {}, params, consts, batch)
    img = plugged.image_features(tree, params, batch["image"])
    txt = plugged.text_features(tree, params, texts)
    head = tree[dept.HEAD]
    rows = jnp.concatenate([dept.head_logits(head, "film_text", txt)[batch["label"]],
                            dept.head_logits(head, "film_image", img)])
    expected = L.cross_entropy(rows, jnp.concatenate([batch["label"], batch["label"]]))
    np.testing.assert_allclose(metrics["dept"], expected, rtol=1e-5)
    np.testing.assert_allclose(total, 0.3 * metrics["ce"] + 0.7 * metrics["dept"], rtol=1e-6)


@pytest.mark.parametrize("name", ["coop", "maple"])
def test_learns_and_leaves_clip_bit_identical(tiny, name):
    backbone, params, tokenizer = tiny
    _, plugged = with_dept(tiny, name)
    config = plugged.config
    tree = plugged.init(jax.random.key(0), params, CLASSES)
    frozen_before = jax.tree.map(np.array, params)
    phase = plugged.phases()[0]
    plan = train.plan_phase(plugged, phase, tree)
    tx = train.make_optimizer(phase, plan.selection.labels(tree), 1000, config.optim)
    state = train.init_state(tree, tx, False)
    consts = train.phase_constants(plugged, plan, tree, params, plugged.class_texts(params, CLASSES), None)
    step = train.make_train_step(plugged, plan, tx)
    batch = random_batch(8, 32, len(CLASSES))
    losses = []
    for _ in range(15):
        state, metrics = step(state, params, consts, batch)
        losses.append((float(metrics["ce"]), float(metrics["dept"])))
    assert step._cache_size() == 1
    assert losses[-1][0] < 0.8 * losses[0][0] and losses[-1][1] < 0.5 * losses[0][1]
    for path, value in P.flatten(state.prompts).items():
        assert not np.array_equal(value, P.flatten(tree)[path]), path   # every leaf, the head's too, moved
    jax.tree.map(np.testing.assert_array_equal, params, frozen_before)


@pytest.mark.slow
def test_packed_seeds_resume_bit_for_bit_and_print_beside_the_base_method(tmp_path):
    small = dict(dataset__shots=4, batch_size=4, eval_batch_size=16, optim__epochs=2, log_every=2,
                 checkpoint_every_steps=3, pack_seeds="1,2")

    def config(base_run: str):   # base_run is operational: a run resumes with another
        return tiny_config("promptsrc", arg="tiny,plugin=dept", base_run=base_run, **small)

    full = run(config("train"), str(tmp_path / "full"))
    with pytest.raises(train.Preempted):
        run(config(""), str(tmp_path / "cut"), stop_at_step=7)
    resumed = run(config(str(tmp_path / "full" / "base")), str(tmp_path / "cut"))
    for seed in (1, 2):
        with np.load(tmp_path / "full" / f"seed{seed}" / "prompts.npz") as a, \
                np.load(tmp_path / "cut" / f"seed{seed}" / "prompts.npz") as b:
            assert any(k.startswith("dept/") for k in a.files)
            for key in set(a.files) - {PROMPTS_META_KEY}:   # (the meta records the run's config, base_run too)
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert [r["accuracy"] for r in resumed] == [r["accuracy"] for r in full]
    assert [r["method"] for r in full] == ["promptsrc+dept"] * 2
    assert [r["base_method"] for r in resumed] == [r["base_method"] for r in full]
    assert [r["base_method"]["method"] for r in full] == ["promptsrc"] * 2
    saved = json.loads((tmp_path / "full" / "base" / "seed1" / "results.json").read_text())
    assert saved["accuracy"] == full[0]["base_method"]["accuracy"]
    assert "base_method" not in json.loads((tmp_path / "full" / "seed1" / "results.json").read_text())
    table = format_run(full)   # each: 2 seeds, their mean and interval
    assert table.count("| promptsrc+dept |") == 4 and table.count("| promptsrc |") == 4
    assert table.index("| promptsrc+dept |") < table.index("| promptsrc |")
    classifier = load_classifier(str(tmp_path / "full" / "seed1"))   # the head's rows: one per training class
    assert classifier.predict([np.zeros((32, 32, 3), np.uint8)]).shape == (1, 5)
    # predict scores the training classes with the head and any other list (the new classes: as many) without it,
    # as the run's evaluations did
    from aple_jax.run import build_setting, seed_config
    evals = json.loads((tmp_path / "full" / "seed1" / "results.json").read_text())["evals"]
    for ev in build_setting(seed_config(config(""), 1)).evals:
        images = np.stack([ev.splits.test[i]["image"] for i in range(len(ev.splits.test))])
        predicted = classifier.with_classes(ev.splits.classnames).predict(images).argmax(1)
        labels = ev.splits.test.labels
        correct = np.bincount(labels[predicted == labels], minlength=ev.splits.num_classes)
        assert correct.tolist() == evals[ev.name]["per_class_correct"], ev.name
