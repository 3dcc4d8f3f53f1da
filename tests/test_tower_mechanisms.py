"""The towers' mechanisms beyond prompts (aple_jax/clip/mods.py): each absent or zero gives plain CLIP bit for bit,
each non-zero one changes the features as its definition says; split names reach the method; Adam and AdamW."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from aple_jax import evaluate, prompts as P, train
from aple_jax.clip import model as clip_model
from aple_jax.clip import mods as M
from aple_jax.clip.model import CLIP, ResidualAttentionBlock
from aple_jax.methods.base import Phase

from tests.test_clip_model import CFG, MODEL, images, params, text  # noqa: F401 - the 4-layer tiny CLIP's fixtures

LAYERS = CFG.vision_layers   # = CFG.text_layers


@functools.partial(jax.jit, static_argnames=("image_mods", "text_mods"))
def towers(params, images, embeds, eot, image_mods=None, text_mods=None):
    img = MODEL.apply({"params": params}, images, None, None, image_mods, method=CLIP.encode_image)
    txt = MODEL.apply({"params": params}, embeds, eot, None, text_mods, method=CLIP.encode_text)
    return img, txt


def logits(params, images, text, image_mods=None, text_mods=None):
    _, eot, embeds = text
    img, txt = towers(params, images, embeds, eot, image_mods=image_mods, text_mods=text_mods)
    img = img[0] if isinstance(img, tuple) else img
    return np.asarray(jnp.exp(params["logit_scale"]) * clip_model.normalize(img) @ clip_model.normalize(txt).T)


def lora_factors(width: int, layers: int, rank: int, b_scale: float, seed: int):
    keys = iter(jax.random.split(jax.random.key(seed), 2 * layers * len(M.PROJECTIONS)))
    return {(i, name): (jax.random.normal(next(keys), (rank, width)),
                        b_scale * jax.random.normal(next(keys), (width, rank)))
            for i in range(layers) for name in M.PROJECTIONS}


# ------------------------------------------------------------------------------------------------ LoRA deltas

def test_zero_lora_delta_gives_plain_clip_bit_for_bit_and_a_nonzero_one_changes_it(params, images, text):
    plain = logits(params, images, text)
    zero_v = M.TowerMods(projection=M.lora_hook(lora_factors(CFG.vision_width, LAYERS, 2, 0.0, 1), 0.7))
    zero_t = M.TowerMods(projection=M.lora_hook(lora_factors(CFG.text_width, LAYERS, 2, 0.0, 2), 0.7))
    assert np.array_equal(logits(params, images, text, zero_v, zero_t), plain)
    live = M.TowerMods(projection=M.lora_hook(lora_factors(CFG.text_width, LAYERS, 2, 0.5, 3), 0.7))
    assert not np.allclose(logits(params, images, text, None, live), plain, atol=1e-3)


def test_lora_x_path_equals_the_merged_weight(params, images, text):
    """y + s (x A^T) B^T = x (W + s B A)^T: the hook and a delta merged into the frozen kernels agree."""
    factors = lora_factors(CFG.vision_width, LAYERS, 2, 0.3, 5)
    _, eot, embeds = text
    hooked = towers(params, images, embeds, eot, image_mods=M.TowerMods(projection=M.lora_hook(factors, 0.7)))[0]
    deltas = {}
    for (i, name), (a, b) in factors.items():
        path = f"visual/transformer/resblocks.{i}/attn/{name}/kernel"
        kernel = P.flatten(params)[path]
        deltas[path] = M.lora_delta(a, b, 0.7).T.reshape(kernel.shape)   # PyTorch (out, in) -> our (in, ...)
    merged = towers(M.add_deltas(params, deltas), images, embeds, eot)[0]
    np.testing.assert_allclose(hooked, merged, rtol=2e-5, atol=2e-5)


def test_lora_dropout_draws_per_key_and_keeps_the_expectation(params, images, text):
    factors = lora_factors(CFG.vision_width, LAYERS, 2, 0.3, 6)
    run = lambda rng: MODEL.apply({"params": params}, images, None, None,
                                  M.TowerMods(projection=M.lora_hook(factors, 0.7, 0.25, rng)), method=CLIP.encode_image)
    a, b = run(jax.random.key(1)), run(jax.random.key(2))
    assert not np.allclose(a, b, atol=1e-4)
    np.testing.assert_array_equal(a, run(jax.random.key(1)))


def test_replaced_leaves_never_touch_the_frozen_tree(params, images, text):
    flat = P.flatten(params)
    before = {k: np.asarray(v).copy() for k, v in flat.items()}
    same = {p: flat[p] for p in flat if p.endswith(("ln_1/scale", "ln_2/bias"))}
    assert np.array_equal(logits(M.replace_leaves(params, same), images, text), logits(params, images, text))
    shifted = {p: v + 0.1 for p, v in same.items()}
    assert not np.allclose(logits(M.replace_leaves(params, shifted), images, text), logits(params, images, text))
    for k, v in P.flatten(params).items():
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(ValueError, match="no CLIP parameters at"):
        M.replace_leaves(params, {"visual/nope": jnp.zeros(())})


# ------------------------------------------------------------------------------------------ residual adapters

def adapter(scale: float, width: int, seed: int) -> M.TowerMods:
    w = jax.random.normal(jax.random.key(seed), (width, width)) / width ** 0.5
    return M.TowerMods(residual=lambda i, h: scale * jnp.tanh(h @ w) if i >= 1 else None)


def test_zero_scale_adapter_gives_plain_clip_bit_for_bit_and_a_live_one_changes_it(params, images, text):
    plain = logits(params, images, text)
    zero = logits(params, images, text, adapter(0.0, CFG.vision_width, 1), adapter(0.0, CFG.text_width, 2))
    assert np.array_equal(zero, plain)
    live = logits(params, images, text, adapter(0.1, CFG.vision_width, 1), adapter(0.1, CFG.text_width, 2))
    assert not np.allclose(live, plain, atol=1e-3)


def test_adapter_is_added_to_the_block_output_from_ln_1_of_its_input(params, images):
    """Block i's output is plain block(x) + residual(ln_1(x)), x its input (MMA's placement)."""
    mods = adapter(0.5, CFG.vision_width, 3)
    outs = block_outputs(params, images, mods)
    block = ResidualAttentionBlock(CFG.vision_heads, CFG.mlp_ratio, CFG.activation, False)
    block_params = params["visual"]["transformer"]["resblocks.1"]
    x = outs[0]
    want = block.apply({"params": block_params}, x) + mods.residual(1, nn_layer_norm(x, block_params["ln_1"]))
    np.testing.assert_allclose(outs[1], want, rtol=1e-5, atol=1e-5)


def nn_layer_norm(x, p, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * p["scale"] + p["bias"]


def block_outputs(params, images, mods):
    _, state = MODEL.apply({"params": params}, images, None, None, mods, method=CLIP.encode_image,
                           mutable=["intermediates"],
                           capture_intermediates=lambda mdl, _: isinstance(mdl, ResidualAttentionBlock))
    tower = state["intermediates"]["visual"]["transformer"]
    return [tower[f"resblocks.{i}"]["__call__"][0] for i in range(len(tower))]


def test_gradient_scale_is_the_identity_forward_and_scales_backward():
    x = jnp.arange(3.0)
    np.testing.assert_array_equal(M.scale_gradient(x, 1000.0), x)
    np.testing.assert_allclose(jax.grad(lambda v: (M.scale_gradient(v, 1000.0) ** 2).sum())(x), 2000.0 * x)


# -------------------------------------------------------------------------------------------- inserted tokens

def test_absent_inserted_tokens_give_plain_clip_bit_for_bit(params, images, text):
    assert np.array_equal(logits(params, images, text, M.TowerMods(), M.TowerMods()), logits(params, images, text))


def test_text_tokens_inserted_before_the_last_block_and_the_moved_eot(params, text):
    """Inserted after SOT before the last block: the blocks before unchanged, the last sees the tokens, EOT pooled n
    places on."""
    _, eot, embeds = text
    last = LAYERS - 1
    n = 2
    tokens = 0.3 * jax.random.normal(jax.random.key(7), (n, CFG.text_width))
    mods = M.TowerMods(inserted=[tokens], inserted_from=last)
    got = MODEL.apply({"params": params}, embeds, eot, None, mods, method=CLIP.encode_text)
    _, state = MODEL.apply({"params": params}, embeds, eot, method=CLIP.encode_text, mutable=["intermediates"],
                           capture_intermediates=lambda mdl, _: isinstance(mdl, ResidualAttentionBlock))
    x = state["intermediates"]["text"]["transformer"][f"resblocks.{last - 1}"]["__call__"][0]
    x = jnp.concatenate([x[:, :1], jnp.broadcast_to(tokens, (x.shape[0], n, CFG.text_width)), x[:, 1:]], axis=1)
    tp = params["text"]
    block = ResidualAttentionBlock(CFG.text_heads, CFG.mlp_ratio, CFG.activation, True)
    x = nn_layer_norm(block.apply({"params": tp["transformer"][f"resblocks.{last}"]}, x), tp["ln_final"])
    want = x[jnp.arange(x.shape[0]), eot + n] @ tp["text_projection"]["kernel"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_vision_inserted_tokens_are_replaced_per_block_and_pooled_by_their_projection(params, images):
    n = 3
    tokens = list(0.3 * jax.random.normal(jax.random.key(8), (LAYERS - 1, n, CFG.vision_width)))
    proj = jax.random.normal(jax.random.key(9), (CFG.vision_width, CFG.embed_dim))
    mods = M.TowerMods(inserted=tokens, inserted_from=1, inserted_proj=proj)
    features, pooled = MODEL.apply({"params": params}, images, None, None, mods, method=CLIP.encode_image)
    outs = block_outputs(params, images, mods)
    assert outs[0].shape[1] == CFG.num_patches + 1 and outs[1].shape[1] == CFG.num_patches + 1 + n
    assert outs[-1].shape[1] == CFG.num_patches + 1 + n   # replaced, not appended again
    ln_post = params["visual"]["ln_post"]
    np.testing.assert_allclose(pooled, nn_layer_norm(outs[-1][:, 1:1 + n], ln_post).mean(1) @ proj, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(features, nn_layer_norm(outs[-1][:, 0], ln_post) @ params["visual"]["proj"]["kernel"],
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=f"need {LAYERS - 1} token sets, got 1"):
        MODEL.apply({"params": params}, images, None, None, M.TowerMods(inserted=tokens[:1], inserted_from=1),
                    method=CLIP.encode_image)


def test_later_inserted_tokens_blend_with_their_previous_output_under_beta(params, images):
    """MMRL++: before each block after the first, the tokens are beta * new + (1 - beta) * the last block's output."""
    n, beta = 2, 0.25
    tokens = list(0.3 * jax.random.normal(jax.random.key(10), (LAYERS - 1, n, CFG.vision_width)))
    outs = block_outputs(params, images, M.TowerMods(inserted=tokens, inserted_from=1, inserted_beta=beta))
    x = outs[-2]
    x = jnp.concatenate([x[:, :1], beta * tokens[-1] + (1 - beta) * x[:, 1:1 + n], x[:, 1 + n:]], axis=1)
    block = ResidualAttentionBlock(CFG.vision_heads, CFG.mlp_ratio, CFG.activation, False)
    want = block.apply({"params": params["visual"]["transformer"][f"resblocks.{LAYERS - 1}"]}, x)
    np.testing.assert_allclose(outs[-1], want, rtol=1e-5, atol=1e-5)
    replaced = block_outputs(params, images, M.TowerMods(inserted=tokens, inserted_from=1))
    assert not np.allclose(outs[-1], replaced[-1], atol=1e-4)
    np.testing.assert_array_equal(outs[1], replaced[1])   # the first insertion does not blend


# ------------------------------------------------------------------------------------------ split and optimizers

class SplitProbe:
    """Wraps a method: new-class logits favour class 0 (any other split is the method's own)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def eval_logits(self, prompts, clip_params, class_side, images, split):
        out = self.inner.eval_logits(prompts, clip_params, class_side, images, split)
        return out.at[:, 0].add(1e6) if split == "new" else out


def test_the_split_name_reaches_the_method():
    from aple_jax.clip.backbone import load_backbone
    from aple_jax.data import build_dataset
    from aple_jax.data.pipeline import eval_loader
    from aple_jax.methods import build_method
    from aple_jax.sharding import make_mesh
    from tests.helpers import tiny_config
    backbone, params, tokenizer = load_backbone("tiny", "")
    method = SplitProbe(build_method(tiny_config("zeroshot"), backbone, tokenizer))
    data = build_dataset("synthetic", "", shots=2, subsample="all", seed=1, num_classes=4, train_per_class=2,
                         test_per_class=3, image_size=32)
    mesh = make_mesh(jax.devices()[:1])
    run = lambda split: evaluate.evaluate_batches(
        method, {}, params, list(data.classnames), data.template,
        eval_loader(data.test, global_batch_size=8, image_size=32, mesh=mesh), split=split)
    new = run("new")
    assert new.per_class_accuracy[0] == 100.0 and new.per_class_accuracy[1:] == [0.0] * 3
    assert run("base").accuracy == run("all").accuracy


def optim_config(**kw) -> ml_collections.ConfigDict:
    base = dict(name="sgd", momentum=0.9, weight_decay=0.1, betas=(0.9, 0.999), eps=1e-8, no_decay=(),
                schedule="cosine_epoch", min_lr=0.0, warmup_epochs=0, warmup_lr=1e-5)
    return ml_collections.ConfigDict({**base, **kw})


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_phases_decay_only_their_masked_leaves(name):
    tree = {"a": {"w": jnp.ones((2, 3))}, "b": {"bias": jnp.ones((3,))}, "frozen": jnp.ones((4,))}
    phase = Phase("p", ("a/.*", "b/.*"), epochs=2, lr=0.1, optimizer=name)
    labels = P.select(tree, phase.train).labels(tree)
    tx = train.make_optimizer(phase, labels, 5, optim_config(no_decay=("b/.*",)))
    zero = jax.tree.map(jnp.zeros_like, tree)
    updates, _ = tx.update(zero, tx.init(tree), tree)
    assert float(jnp.abs(updates["a"]["w"]).max()) > 0          # decayed towards zero
    assert float(jnp.abs(updates["b"]["bias"]).max()) == 0.0    # excluded from decay
    assert float(jnp.abs(updates["frozen"]).max()) == 0.0       # not trained
    if name == "adamw":   # decoupled: lr * wd * w
        np.testing.assert_allclose(updates["a"]["w"], -0.1 * 0.1 * tree["a"]["w"], rtol=1e-6)
    grads = {"a": {"w": jnp.full((2, 3), 0.5)}, "b": {"bias": jnp.full((3,), -0.5)}, "frozen": jnp.ones((4,))}
    updates, _ = tx.update(grads, tx.init(tree), tree)
    assert float(updates["b"]["bias"][0]) == pytest.approx(0.1, rel=1e-4)   # Adam's first step: lr * sign
    assert float(jnp.abs(updates["frozen"]).max()) == 0.0


def test_step_cosine_reaches_min_lr_and_iterations_resolve_to_epochs():
    phase = Phase("p", (".*",), epochs=4, lr=0.2)
    lr = train.learning_rate(phase, 10, optim_config(schedule="cosine_step", min_lr=0.002))
    assert float(lr(0)) == pytest.approx(0.2) and float(lr(40)) == pytest.approx(0.002)
    assert float(lr(20)) == pytest.approx(0.101)
    budget = Phase("q", (".*",), epochs=0, lr=0.1, iterations=8000)
    assert train.resolve_iterations([budget, phase], 23) == [dataclasses.replace(budget, epochs=348, iterations=0),
                                                              phase]
    with pytest.raises(ValueError, match="expected one of"):
        train.make_optimizer(dataclasses.replace(phase, optimizer="lion"), {}, 1, optim_config())
    assert isinstance(train.make_optimizer(phase, {}, 1, optim_config()), optax.GradientTransformation)
