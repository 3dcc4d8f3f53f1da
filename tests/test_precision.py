"""bf16 compute: the towers' matmuls run in bf16 when asked, parameters and projections stay fp32."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aple_jax.clip import model as M


def _dot_operand_types(fn, *args) -> list[tuple[str, str]]:
    text = jax.jit(fn).lower(*args).as_text()
    ops = re.findall(r"stablehlo\.(?:dot_general|convolution).*?: \(tensor<(?:\d+x)*(\w+)>, tensor<(?:\d+x)*(\w+)>\)",
                     text)
    assert ops, "no matmul found in the lowered program"
    return ops


@pytest.fixture(scope="module")
def tiny():
    cfg = M.get_config("tiny")
    return cfg, M.init_params(cfg)


@pytest.mark.parametrize("dtype,name", [(jnp.bfloat16, "bf16"), (jnp.float32, "f32")])
def test_tower_matmuls_run_in_the_compute_dtype(tiny, dtype, name):
    cfg, params = tiny
    model = M.CLIP(cfg, dtype)
    image = lambda p, x: model.apply({"params": p}, x, method=M.CLIP.encode_image)
    text = lambda p, ids: model.apply({"params": p}, model.apply({"params": p}, ids, method=M.CLIP.embed_tokens),
                                      jnp.argmax(ids, -1), method=M.CLIP.encode_text)
    for fn, arg in ((image, jnp.zeros((2, 32, 32, 3))), (text, jnp.ones((3, 7), jnp.int32))):
        ops = _dot_operand_types(fn, params, arg)
        *tower, projection = ops                      # the final projection stays fp32 by design
        assert all(a == b == name for a, b in tower), ops
        assert projection == ("f32", "f32")
        assert len(tower) >= cfg.vision_layers * 6


def test_bf16_features_stay_close_to_fp32(tiny):
    cfg, params = tiny
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    f32 = M.CLIP(cfg).apply({"params": params}, x, method=M.CLIP.encode_image)
    bf16 = M.CLIP(cfg, jnp.bfloat16).apply({"params": params}, x, method=M.CLIP.encode_image)
    assert bf16.dtype == jnp.float32
    assert float(jnp.linalg.norm(bf16 - f32) / jnp.linalg.norm(f32)) < 0.05
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
