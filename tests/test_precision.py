"""bf16 compute: the towers' matmuls run in bf16 when asked; projections and the trainable state stay fp32."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aple_jax import prompts as P
from aple_jax import train
from aple_jax.clip import model as M
from aple_jax.clip.backbone import Backbone
from aple_jax.clip.tokenizer import Tokenizer
from aple_jax.methods import build_method
from tests.helpers import random_batch, tiny_config


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


def test_bf16_training_keeps_prompts_and_optimizer_state_fp32(tiny):
    """With the towers in bf16 the trainable state (prompts, SGD momentum) still updates in fp32."""
    cfg, params = tiny
    backbone = Backbone(M.CLIP(cfg, jnp.bfloat16))   # what load_backbone(..., dtype="bfloat16") builds
    method = build_method(tiny_config("ivlp", optim__warmup_epochs=0), backbone, Tokenizer.builtin_tiny())
    prompts = method.init(jax.random.key(0), params)
    phase = method.phases()[0]
    plan = train.plan_phase(method, phase, prompts)
    tx = train.make_optimizer(phase, plan.selection.labels(prompts), 1000, method.config.optim)
    state = train.init_state(prompts, tx, False)
    consts = train.phase_constants(method, plan, prompts, params, method.class_texts(params, ["a", "b", "c"]), None)
    step = train.make_train_step(method, plan, tx)
    batch = random_batch(4, cfg.image_resolution, 3)
    assert "bf16" in step.lower(state, params, consts, batch).as_text()   # the step really computes in bf16
    before = {k: np.array(v) for k, v in P.flatten(prompts).items()}   # copies: the step donates the state
    for _ in range(2):   # the second step also reads the momentum the first one wrote
        state, metrics = step(state, params, consts, batch)
    assert np.isfinite(float(metrics["loss"]))
    for path, leaf in P.flatten(state.prompts).items():
        assert leaf.dtype == jnp.float32, (path, leaf.dtype)
        assert not np.array_equal(np.asarray(leaf), before[path]), f"{path} did not train"
    opt_leaves = jax.tree_util.tree_leaves_with_path(state.opt_state)
    floats = [(jax.tree_util.keystr(k), x.dtype) for k, x in opt_leaves if jnp.issubdtype(x.dtype, jnp.inexact)]
    assert len(floats) >= len(before), floats   # a momentum trace per prompt leaf, at least
    assert all(dtype == jnp.float32 for _, dtype in floats), floats
    assert all(jnp.issubdtype(x.dtype, jnp.integer) for _, x in opt_leaves if not jnp.issubdtype(x.dtype, jnp.inexact))



def test_bf16_towers_keep_an_fp32_residual_stream(tiny):
    """Only the blocks' matmuls run in bf16: every block of both towers adds its update to an fp32 stream."""
    cfg, params = tiny
    model = M.CLIP(cfg, jnp.bfloat16)
    ids = jnp.ones((3, 7), jnp.int32)
    calls = [(M.CLIP.encode_image, (jnp.zeros((2, 32, 32, 3)),)),
             (M.CLIP.encode_text, (model.apply({"params": params}, ids, method=M.CLIP.embed_tokens), jnp.full(3, 6)))]
    for method, args in calls:
        _, state = model.apply({"params": params}, *args, method=method, capture_intermediates=True)
        flat = jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
        blocks = {jax.tree_util.keystr(path): leaf.dtype for path, leaf in flat
                  if re.search(r"\['resblocks\.\d+'\]\['__call__'\]", jax.tree_util.keystr(path))}
        assert len(blocks) == cfg.vision_layers and all(d == jnp.float32 for d in blocks.values()), blocks
