"""The baselines on the shared engine: parameter counts, learning, loss terms, GPA, MaPLe's coupling path."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aple_jax import losses as L
from aple_jax import prompts as P
from aple_jax import train
from aple_jax.clip import model as clip_model
from aple_jax.clip.backbone import Backbone, load_backbone
from aple_jax.clip.tokenizer import Tokenizer
from aple_jax.methods import build_method
from aple_jax.methods.base import Method
from tests.helpers import random_batch, tiny_config

CLASSES = [f"class {i}" for i in range(6)]


def _b16_count(name: str, arg: str = "") -> int:
    """Trainable parameters of a method on ViT-B/16 shapes, without materialising CLIP."""
    config = importlib.import_module(f"configs.{name}").get_config(arg)
    backbone = Backbone(clip_model.CLIP(clip_model.get_config("ViT-B/16")))
    abstract = jax.eval_shape(lambda: clip_model.init_params(backbone.cfg))
    method = build_method(config, backbone, Tokenizer.builtin_tiny())
    shapes = jax.eval_shape(lambda p: method.init(jax.random.key(0), p), abstract)
    return P.count_params(shapes)


def test_trainable_parameter_counts_match_the_protocol():
    assert _b16_count("maple") == 9 * 2 * 512 + 9 * (512 * 768 + 768) == 3_555_072
    assert _b16_count("ivlp") == 46_080
    assert _b16_count("promptsrc") == 46_080
    assert _b16_count("aple") == 46_080
    assert _b16_count("coop") == 2_048
    assert _b16_count("kgcoop") == 2_048
    assert _b16_count("cocoop") == 2_048 + (512 * 32 + 32) + (32 * 512 + 512)


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny", "")


@pytest.mark.parametrize("name", ["coop", "kgcoop", "cocoop", "maple", "promptsrc"])
def test_training_lowers_the_loss_and_fits_a_fixed_batch(tiny, name):
    backbone, params, tokenizer = tiny
    config = tiny_config(name, optim__warmup_epochs=0, optim__lr=0.05)
    method = build_method(config, backbone, tokenizer)
    prompts = method.init(jax.random.key(0), params)
    phase = method.phases()[0]
    plan = train.plan_phase(method, phase, prompts)
    tx = train.make_optimizer(phase, plan.selection.labels(prompts), 1000, config.optim)
    state = train.init_state(prompts, tx, phase.gpa is not None)
    texts = method.class_texts(params, CLASSES)
    teacher = method.text_features({}, params, texts, ()) if plan.needs_teacher_text else None
    consts = train.phase_constants(method, plan, prompts, params, texts, teacher)
    step = train.make_train_step(method, plan, tx)
    batch = random_batch(8, 32, len(CLASSES))
    first = last = None
    for _ in range(25):
        state, metrics = step(state, params, consts, batch)
        first = first if first is not None else float(metrics["ce"])
        last = float(metrics["ce"])
    assert last < 0.8 * first, (name, first, last)
    assert step._cache_size() == 1


@pytest.mark.parametrize("term", [L.l1_to_frozen, L.text_cosine])
def test_feature_terms_vanish_at_the_teacher_and_pull_towards_it(term):
    rng = np.random.default_rng(0)
    teacher = jnp.asarray(rng.normal(size=(5, 16)), jnp.float32)
    assert float(term(teacher, teacher)) < 1e-6
    student = teacher + 0.3 * jnp.asarray(rng.normal(size=(5, 16)), jnp.float32)
    g = jax.grad(term)(student, teacher)
    assert float(term(student - 0.1 * g, teacher)) < float(term(student, teacher))


def test_gpa_weights_sum_to_one_and_peak_at_the_mean():
    w = train.gpa_weights(20, 15.0, 1.0)
    assert abs(w.sum() - 1) < 1e-6 and int(np.argmax(w)) == 14
    np.testing.assert_allclose(w[12:17], [0.054, 0.242, 0.399, 0.242, 0.054], atol=1e-3)


def test_gpa_aggregate_is_the_weighted_average_of_epoch_prompts(tmp_path):
    from aple_jax.prompt_files import read_prompts
    from aple_jax.run import run
    config = tiny_config("promptsrc", optim__epochs=3, gpa__mean=2.0, gpa__std=1.0, dataset__shots=4,
                         batch_size=8, curve_points=0)
    epochs = []
    from aple_jax import train as T
    original = T.accumulate_gpa

    def spy(state, weight):
        epochs.append((weight, jax.device_get(state.prompts)))
        return original(state, weight)

    T.accumulate_gpa = spy
    try:
        run(config, str(tmp_path))
    finally:
        T.accumulate_gpa = original
    weights = np.array([w for w, _ in epochs])
    np.testing.assert_allclose(weights, train.gpa_weights(3, 2.0, 1.0), rtol=1e-6)
    final = P.flatten(read_prompts(str(tmp_path / "prompts.npz"), epochs[0][1]))
    for path, value in final.items():
        expected = sum(w * P.flatten(p)[path] for w, p in epochs)
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-7, err_msg=path)


def test_maple_coupling_reproduces_ivlp_with_the_projected_prompts(tiny):
    backbone, params, tokenizer = tiny
    cfg = backbone.cfg
    maple = build_method(tiny_config("maple"), backbone, tokenizer)
    ivlp_cfg = tiny_config("ivlp", prompts__vision__n_ctx=2, prompts__vision__depth=maple.text_depth)
    ivlp = build_method(ivlp_cfg, backbone, tokenizer)
    prompts = maple.init(jax.random.key(0), params)
    rng = np.random.default_rng(0)
    vision = {}
    for i, name in enumerate(["ctx"] + [f"deep_{k}" for k in range(1, maple.text_depth)]):
        target = jnp.asarray(rng.normal(size=(2, cfg.vision_width)), jnp.float32)
        prompts["text"][name] = jnp.eye(2, cfg.text_width, dtype=jnp.float32)     # one-hot rows
        kernel = jnp.zeros((cfg.text_width, cfg.vision_width)).at[:2].set(target)
        prompts["coupling"][f"proj_{i}"] = {"kernel": kernel, "bias": jnp.zeros(cfg.vision_width)}
        vision["shallow" if name == "ctx" else name] = target
    images = random_batch(3, cfg.image_resolution, 2)["image"]
    got = maple.image_features(prompts, params, images)
    want = ivlp.image_features({"vision": vision}, params, images)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    plain = Method.image_features(ivlp, {}, params, images)
    assert float(jnp.abs(got - plain).max()) > 1e-3      # the coupled prompts do reach the vision tower


@pytest.mark.parametrize("per_pass", [8, 5])   # 3 x 7 = 21 prompts: 3 passes of 7; or 5 passes of 5, 4 padded
def test_cocoop_text_passes_match_all_prompts_at_once(tiny, per_pass):
    backbone, params, tokenizer = tiny
    classes = [f"class {i}" for i in range(7)]
    whole = build_method(tiny_config("cocoop", cocoop__prompts_per_pass=0), backbone, tokenizer)
    chunked = build_method(tiny_config("cocoop", cocoop__prompts_per_pass=per_pass), backbone, tokenizer)
    prompts = whole.init(jax.random.key(0), params)
    texts = whole.class_texts(params, classes)
    batch = random_batch(3, backbone.cfg.image_resolution, len(classes))

    def run(method):
        def loss(p):
            img, txt = method.features(p, params, texts, batch["image"])
            logits = L.cosine_logits(backbone.logit_scale(params), img, txt)
            ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["label"][:, None], 1).mean()
            return ce, (txt, logits)
        return jax.jit(jax.grad(loss, has_aux=True))(prompts)

    (g0, (t0, l0)), (g1, (t1, l1)) = run(whole), run(chunked)
    jaxpr = str(jax.make_jaxpr(chunked.features)(prompts, params, texts, batch["image"]))
    assert "scan" in jaxpr and "remat" in jaxpr                      # the chunked path did run
    assert t1.shape == t0.shape == (3, 7, backbone.cfg.embed_dim)
    np.testing.assert_allclose(t1, t0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(l1, l0, rtol=1e-5, atol=1e-5)
    for path, want in P.flatten(g0).items():
        got = P.flatten(g1)[path]
        assert float(jnp.abs(want).max()) > 0, path
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()), err_msg=path)
