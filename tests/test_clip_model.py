"""Invariants of the linen CLIP's prompt insertion points (tiny random CLIPs, no torch)."""
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aple_jax.clip import model as clip_model
from aple_jax.clip.model import CLIP, ResidualAttentionBlock
from aple_jax.clip.tokenizer import Tokenizer

# 4 layers per tower, so a deep prompt can sit at layer 2 with layers before and after it.
CFG = dataclasses.replace(clip_model.get_config("tiny"), vision_layers=4, text_layers=4)
MODEL = CLIP(CFG)
PROMPTS = ["a photo of a red triangle.", "itap of my crème brûlée #3", "x", "a blurry photo of the cool toy dog."]


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def params():
    return clip_model.init_params(CFG, seed=3)


@pytest.fixture(scope="module")
def images():
    return jax.random.normal(jax.random.key(0), (3, CFG.image_resolution, CFG.image_resolution, 3))


@pytest.fixture(scope="module")
def text(params):
    ids, eot = Tokenizer.builtin_tiny().tokenize(PROMPTS, CFG.context_length)
    embeds = MODEL.apply({"params": params}, jnp.asarray(ids), method=CLIP.embed_tokens)
    return ids, jnp.asarray(eot), embeds


@jax.jit
def encode_image(params, images, shallow=None, deep=None):
    return MODEL.apply({"params": params}, images, shallow, deep, method=CLIP.encode_image)


@jax.jit
def encode_text(params, embeds, eot, deep=None):
    return MODEL.apply({"params": params}, embeds, eot, deep, method=CLIP.encode_text)


def block_outputs(params, method, *args):
    """Outputs of every residual block, in order (capture_intermediates)."""
    _, state = MODEL.apply({"params": params}, *args, method=method, mutable=["intermediates"],
                           capture_intermediates=lambda mdl, _: isinstance(mdl, ResidualAttentionBlock))
    tower = state["intermediates"]["visual" if method is CLIP.encode_image else "text"]["transformer"]
    return [tower[f"resblocks.{i}"]["__call__"][0] for i in range(len(tower))]


def test_empty_prompts_give_plain_clip(params, images, text):
    _, eot, embeds = text
    plain_img = encode_image(params, images)
    empty = jnp.zeros((0, CFG.vision_width))
    for shallow, deep in ((empty, None), (None, []), (empty, [empty, empty]), (None, [empty] * 3)):
        np.testing.assert_allclose(encode_image(params, images, shallow, deep), plain_img, rtol=1e-6, atol=1e-6)
    plain_txt = encode_text(params, embeds, eot)
    empty = jnp.zeros((0, CFG.text_width))
    for deep in ([], [empty], [empty] * 3):
        np.testing.assert_allclose(encode_text(params, embeds, eot, deep), plain_txt, rtol=1e-6, atol=1e-6)


def test_plain_call_matches_towers(params, images, text):
    ids, eot, embeds = text
    logits, logits_t = MODEL.apply({"params": params}, images, jnp.asarray(ids))
    img = clip_model.normalize(encode_image(params, images))
    txt = clip_model.normalize(encode_text(params, embeds, eot))
    np.testing.assert_allclose(logits, jnp.exp(params["logit_scale"]) * img @ txt.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(logits_t, logits.T)


def test_text_prompts_equal_to_replaced_embeddings_give_plain_clip(params, text):
    ids, eot, embeds = text
    plain = encode_text(params, embeds, eot)
    n = 2
    # shallow context: slots 1..n replaced by the very embeddings of those tokens
    ctx = MODEL.apply({"params": params}, jnp.asarray(ids[:, 1:1 + n]), method=CLIP.embed_tokens)
    replaced = jnp.concatenate([embeds[:, :1], ctx, embeds[:, 1 + n:]], axis=1)
    np.testing.assert_allclose(encode_text(params, replaced, eot), plain, rtol=1e-6, atol=1e-6)
    # deep prompts equal to the hidden states they replace (slots 1..n before blocks 1..3), per row
    hidden = block_outputs(params, CLIP.encode_text, embeds, eot)
    deep = [h[:, 1:1 + n] for h in hidden[:-1]]
    assert rel(encode_text(params, embeds, eot, deep), plain) < 1e-6


def test_vision_deep_prompts_equal_to_replaced_tokens_give_same_features(params, images):
    n = 3
    shallow = 0.5 * jax.random.normal(jax.random.key(1), (n, CFG.vision_width))
    ref = encode_image(params, images, shallow)
    hidden = block_outputs(params, CLIP.encode_image, images, shallow)
    assert hidden[0].shape[1] == CFG.num_patches + 1 + n
    deep = [h[:, -n:] for h in hidden[:-1]]   # the last n tokens are the prompt slots
    assert rel(encode_image(params, images, shallow, deep), ref) < 1e-6
    # and they do matter: other deep prompts change the features (not a constant shift: LayerNorm removes that)
    noise = jax.random.normal(jax.random.key(2), deep[0].shape)
    assert rel(encode_image(params, images, shallow, [d + noise for d in deep]), ref) > 1e-3


@pytest.mark.parametrize("k", [1, 2, 3])
def test_deep_prompt_at_layer_k_changes_nothing_before_k(params, images, text, k):
    _, eot, embeds = text
    key = jax.random.key(k)
    for method, width, args in ((CLIP.encode_image, CFG.vision_width, (images,)),
                                (CLIP.encode_text, CFG.text_width, (embeds, eot))):
        deep = list(0.3 * jax.random.normal(key, (CFG.text_layers - 1, 2, width)))
        other = list(deep)
        other[k - 1] = other[k - 1] + jax.random.normal(jax.random.key(9), other[k - 1].shape)  # before block k
        extra = (None,) if method is CLIP.encode_image else ()
        a = block_outputs(params, method, *args, *extra, deep)
        b = block_outputs(params, method, *args, *extra, other)
        for i in range(k):
            np.testing.assert_array_equal(a[i], b[i], err_msg=f"{method.__name__}: block {i} < {k} changed")
        keep = slice(0, 1) if method is CLIP.encode_image else slice(3, None)  # tokens that are not prompt slots
        assert rel(a[k][:, keep], b[k][:, keep]) > 1e-3, f"{method.__name__}: block {k} did not see its prompt"
        if method is CLIP.encode_text:  # causal: position 0 (SOT) never sees the context slots
            np.testing.assert_allclose(a[-1][:, 0], b[-1][:, 0], rtol=1e-6, atol=1e-6)


def test_cutting_text_after_last_eot_keeps_features(params, text):
    ids, eot, embeds = text
    full = encode_text(params, embeds, eot)
    cut = int(np.max(eot)) + 1
    assert cut < CFG.context_length
    assert rel(encode_text(params, embeds[:, :cut], eot), full) < 1e-6
    # the deep prompts too, with the cut sequence
    deep = list(0.3 * jax.random.normal(jax.random.key(5), (3, 2, CFG.text_width)))
    assert rel(encode_text(params, embeds[:, :cut], eot, deep), encode_text(params, embeds, eot, deep)) < 1e-6


def test_wrong_image_size_is_a_clear_error(params):
    for shape in ((2, 16, 16, 3), (2, 3, 32, 32), (32, 32, 3)):
        with pytest.raises(ValueError, match=r"\(batch, 32, 32, 3\) \(NHWC\).*got " + re.escape(str(shape))):
            MODEL.apply({"params": params}, jnp.zeros(shape), method=CLIP.encode_image)


def test_text_longer_than_context_is_a_clear_error(params):
    embeds = jnp.zeros((1, CFG.context_length + 1, CFG.text_width))
    with pytest.raises(ValueError, match="78 tokens exceeds the context length 77"):
        MODEL.apply({"params": params}, embeds, jnp.zeros((1,), jnp.int32), method=CLIP.encode_text)


def test_too_many_deep_layers_is_a_clear_error(params, text):
    _, eot, embeds = text
    deep = [jnp.zeros((2, CFG.text_width))] * CFG.text_layers
    with pytest.raises(ValueError, match="4 deep prompt layers need more than the tower's 4 layers"):
        MODEL.apply({"params": params}, embeds, eot, deep, method=CLIP.encode_text)

