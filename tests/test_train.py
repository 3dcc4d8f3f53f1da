"""The phased engine: schedules, selections, masks, one compilation per phase, frozen leaves bit-identical."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aple_jax import losses as L
from aple_jax import prompts as P
from aple_jax import train
from aple_jax.clip import model as clip_model
from aple_jax.clip.backbone import Backbone, load_backbone
from aple_jax.methods import build_method
from aple_jax.methods.base import Method, Phase
from tests.helpers import random_batch, tiny_config

CLASSES = [f"class {i}" for i in range(6)]


@pytest.fixture(scope="module")
def tiny():
    backbone, params, tokenizer = load_backbone("tiny", "")
    return backbone, params, tokenizer


def _method(tiny, name="aple", **overrides):
    backbone, params, tokenizer = tiny
    return build_method(tiny_config(name, **overrides), backbone, tokenizer)


def test_schedule_matches_dassl_maple_values():
    optim = tiny_config().optim
    optim.warmup_epochs, optim.warmup_lr = 1, 1e-5
    lrs = train.cosine_lr_table(Phase("p", (".*",), 5, 0.0035), optim)
    np.testing.assert_allclose(lrs, [1e-5, 3.5e-3, 3.166e-3, 2.291e-3, 1.209e-3], rtol=2e-3)


def test_aple_default_schedule_is_language_vision_joint(tiny):
    m = _method(tiny)
    phases = m.phases()
    assert [p.name for p in phases] == ["L", "V", "LV"]
    assert phases[0].present == ("text",) and dict(phases[0].losses) == {"ce": 1.0, "kl": 1.0}
    assert phases[1].present == ("vision", "text") and phases[2].weights == {"ce": 1.0}


def test_selectors_resolve_leaves_and_token_rows(tiny):
    m = _method(tiny)
    prompts = m.init(jax.random.key(0), tiny[1])
    sel = P.select(prompts, ("text/.*",))
    assert sel.leaves == ("text/ctx", "text/deep_1") and not sel.row_masks
    sel = P.select(prompts, ("vision/.*[1]",))
    assert set(sel.leaves) == {"vision/shallow", "vision/deep_1"}
    np.testing.assert_array_equal(sel.row_masks["vision/shallow"], [0, 1, 0, 0])
    with pytest.raises(ValueError, match="matches no prompt leaf"):
        P.select(prompts, ("coupling/.*",))
    with pytest.raises(ValueError, match="outside leaf"):
        P.select(prompts, ("text/ctx[7]",))


def test_phase_with_nothing_to_train_is_refused():
    with pytest.raises(ValueError, match="trains nothing"):
        Phase("empty", (), 1, 0.1)


def _run_phase(method, params, phase, prompts, steps=3):
    plan = train.plan_phase(method, phase, prompts)
    tx = train.make_optimizer(phase, plan.selection.labels(prompts), 2, method.config.optim)
    state = train.init_state(prompts, tx, False)
    texts = method.class_texts(params, CLASSES)
    teacher = method.text_features({}, params, texts, ()) if plan.needs_teacher_text else None
    consts = train.phase_constants(method, plan, prompts, params, texts, teacher)
    step = train.make_train_step(method, plan, tx)
    losses = []
    for i in range(steps):
        state, metrics = step(state, params, consts, random_batch(4, 32, len(CLASSES), seed=i % 2))
        losses.append(float(metrics["loss"]))
    return state, plan, step, losses


@pytest.mark.parametrize("granularity", ["modality", "token"])
def test_untrained_leaves_are_bit_identical_and_trained_ones_move(tiny, granularity):
    m = _method(tiny, stage1__granularity=granularity, optim__warmup_epochs=0)
    params = tiny[1]
    prompts = m.init(jax.random.key(1), params)
    for phase in m.phases():
        before = {k: np.asarray(v) for k, v in P.flatten(prompts).items()}
        state, plan, step, _ = _run_phase(m, params, phase, prompts)
        after = {k: np.asarray(v) for k, v in P.flatten(state.prompts).items()}
        for path in before:
            if path not in plan.selection.leaves:
                np.testing.assert_array_equal(after[path], before[path], err_msg=f"{phase.name}: {path} moved")
                continue
            rows = plan.selection.row_masks.get(path, np.ones(before[path].shape[0]))
            moved = np.abs(after[path] - before[path]).sum(axis=-1) > 0
            np.testing.assert_array_equal(moved, rows.astype(bool), err_msg=f"{phase.name}: {path}")
        assert step._cache_size() == 1
        prompts = state.prompts


def test_vision_phase_caches_text_features(tiny):
    m = _method(tiny)
    prompts = m.init(jax.random.key(0), tiny[1])
    plans = [train.plan_phase(m, p, prompts) for p in m.phases()]
    assert [p.cache_text for p in plans] == [False, True, False]
    assert [p.needs_teacher_text for p in plans] == [True, True, False]


@pytest.mark.parametrize("name,phase_name", [("ivlp", "train"), ("aple", "L"), ("aple", "V"), ("aple", "LV")])
def test_training_lowers_the_loss_on_a_fixed_batch(tiny, name, phase_name):
    m = _method(tiny, name, optim__warmup_epochs=0, optim__lr=0.05)
    params = tiny[1]
    prompts = m.init(jax.random.key(0), params)
    phase = next(p for p in m.phases() if p.name == phase_name)
    plan = train.plan_phase(m, phase, prompts)
    tx = train.make_optimizer(phase, plan.selection.labels(prompts), 1000, m.config.optim)
    state = train.init_state(prompts, tx, False)
    texts = m.class_texts(params, CLASSES)
    teacher = m.text_features({}, params, texts, ()) if plan.needs_teacher_text else None
    consts = train.phase_constants(m, plan, prompts, params, texts, teacher)
    step = train.make_train_step(m, plan, tx)
    batch = random_batch(8, 32, len(CLASSES))
    losses = []
    for _ in range(30):
        state, metrics = step(state, params, consts, batch)
        losses.append(float(metrics["loss"]))
    assert set(metrics) >= set(phase.weights), metrics.keys()   # APLe's Stage I optimises CE + KL, not CE alone
    # Phase L moves only the class text features (CE + KL to zero-shot): it levels off near 0.69 of the start.
    assert losses[-1] < (0.8 if phase_name == "L" else 0.7) * losses[0], losses
    assert step._cache_size() == 1


def test_kl_is_zero_when_predictions_agree_and_pulls_towards_the_teacher():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 7)), jnp.float32)
    for opts in (L.KLOptions(), L.KLOptions(direction="p_zs", reduction="batchmean")):
        assert abs(float(L.kl_to_zero_shot(logits, logits, opts))) < 1e-6
    teacher = jnp.zeros((4, 7)).at[:, 0].set(5.0)
    g = jax.grad(lambda x: L.kl_to_zero_shot(x, teacher, L.KLOptions()))(logits)
    assert np.all(np.asarray(g[:, 0]) < 0)   # gradient descent raises the teacher's favourite class


def test_reductions_differ_by_the_number_of_classes():
    rng = np.random.default_rng(1)
    a, b = (jnp.asarray(rng.normal(size=(4, 10)), jnp.float32) for _ in range(2))
    s = L.kl_to_zero_shot(a, b, L.KLOptions())
    m = L.kl_to_zero_shot(a, b, L.KLOptions(reduction="batchmean"))
    np.testing.assert_allclose(float(m), 10 * float(s), rtol=1e-5)


def test_nan_loss_stops_with_a_clear_message(tiny):
    m = _method(tiny, "ivlp")
    prompts = m.init(jax.random.key(0), tiny[1])
    phase = m.phases()[0]
    plan = train.plan_phase(m, phase, prompts)
    tx = train.make_optimizer(phase, plan.selection.labels(prompts), 1, m.config.optim)
    state = train.init_state(prompts, tx, False).replace(finite=jnp.asarray(False))
    with pytest.raises(FloatingPointError, match="last good checkpoint"):
        train.check_finite(state, phase, 0, 3)


def test_remat_gives_the_same_features_and_prompt_gradients(tiny):
    """backbone.remat=True recomputes the blocks' activations in the backward pass: same numbers, less memory."""
    backbone, params, tokenizer = tiny
    remat = Backbone(clip_model.CLIP(backbone.cfg, jnp.float32, remat=True))   # as load_backbone(..., remat=True)
    config = tiny_config("ivlp", optim__warmup_epochs=0)
    prompts = build_method(config, backbone, tokenizer).init(jax.random.key(0), params)
    batch = random_batch(4, 32, len(CLASSES))
    out = {}
    for flag, b in ((False, backbone), (True, remat)):
        m = build_method(config, b, tokenizer)
        texts = m.class_texts(params, CLASSES)
        plan = train.plan_phase(m, m.phases()[0], prompts)
        loss_fn = train.make_loss_fn(m, plan)
        trained, frozen = P.split(prompts, plan.selection.leaves)

        def features_and_grads(trained, frozen, texts, batch, m=m, loss_fn=loss_fn):
            grads, metrics = jax.grad(loss_fn, has_aux=True)(trained, frozen, params, {"texts": texts}, batch)
            return m.features(P.merge(frozen, trained), params, texts, batch["image"]), grads, metrics["loss"]

        traced = jax.jit(features_and_grads).trace(trained, frozen, texts, batch)
        program = str(traced.jaxpr)
        assert ("remat" in program or "checkpoint" in program) == flag   # the flag really changes the program
        out[flag] = traced.lower().compile()(trained, frozen, texts, batch)
    ((img0, txt0), g0, l0), ((img1, txt1), g1, l1) = out[False], out[True]
    assert sorted(g0) == sorted(P.flatten(prompts))   # every prompt leaf of both towers has a gradient
    for name, a, b in (("image features", img0, img1), ("text features", txt0, txt1), ("loss", l0, l1),
                       *((f"grad {k}", g0[k], g1[k]) for k in g0)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.linalg.norm(a) > 0, name
        assert np.linalg.norm(b - a) <= 1e-6 * np.linalg.norm(a), name


class _WithOwnTerm(Method):
    """IVLP plus an own term: the squared norm of the image features' distance to the frozen teacher's."""
    own_terms = {"image_pull": "image"}

    def own_loss_terms(self, outputs, logits, batch, teacher, weights):
        return {"image_pull": jnp.mean(jnp.sum((outputs["image"] - teacher["image"]) ** 2, -1))}


def test_a_methods_own_loss_term_is_weighted_into_the_loss_with_its_teacher(tiny):
    backbone, params, tokenizer = tiny
    m = _WithOwnTerm(tiny_config("ivlp", optim__warmup_epochs=0), backbone, tokenizer)
    prompts = m.init(jax.random.key(0), params)
    with pytest.raises(ValueError, match="unknown loss terms \\['nope'\\]"):
        train.plan_phase(m, Phase("p", (".*",), 1, 0.1, losses=(("ce", 1.0), ("nope", 1.0))), prompts)
    phase = Phase("p", (".*",), 1, 0.1, losses=(("ce", 1.0), ("image_pull", 2.5)))
    plan = train.plan_phase(m, phase, prompts)
    assert plan.needs_teacher_image and not plan.needs_teacher_text
    texts = m.class_texts(params, CLASSES)
    consts = train.phase_constants(m, plan, prompts, params, texts, None)
    batch = random_batch(4, 32, len(CLASSES))
    total, metrics = train.make_loss_fn(m, plan)(P.flatten(prompts), {}, params, consts, batch)
    img = m.image_features(prompts, params, batch["image"])
    pull = jnp.mean(jnp.sum((img - backbone.image(params, batch["image"])) ** 2, -1))
    np.testing.assert_allclose(metrics["image_pull"], pull, rtol=1e-5)
    np.testing.assert_allclose(total, metrics["ce"] + 2.5 * metrics["image_pull"], rtol=1e-6)
    assert float(metrics["image_pull"]) > 0
