"""MaPLe: deep language prompts coupled to the vision tower through one linear map per prompted layer.

Vision prompts are `proj_0(ctx)` before `ln_pre` and `proj_i(deep_i)` before vision block i; the coupling runs
text -> vision, so the image path also sends gradients into the text prompts.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from aple_jax import prompts as P
from aple_jax.methods.base import Method

Array = jax.Array


def torch_linear_init(rng: Array, fan_in: int, fan_out: int) -> dict[str, Array]:
    """PyTorch's default nn.Linear init: kernel and bias uniform in +-1/sqrt(fan_in)."""
    k_w, k_b = jax.random.split(rng)
    bound = fan_in ** -0.5
    return {"kernel": jax.random.uniform(k_w, (fan_in, fan_out), jnp.float32, -bound, bound),
            "bias": jax.random.uniform(k_b, (fan_out,), jnp.float32, -bound, bound)}


def linear(params: dict[str, Array], x: Array) -> Array:
    return x @ params["kernel"] + params["bias"]


class MaPLe(Method):
    name = "maple"

    def init(self, rng: Array, clip_params: Any, classnames: Sequence[str] = ()) -> P.Tree:
        k_text, k_proj0, k_proj = jax.random.split(rng, 3)
        tree = super().init(k_text, clip_params, classnames)
        tree.pop("vision", None)
        cfg = self.backbone.cfg
        shared = torch_linear_init(k_proj, cfg.text_width, cfg.vision_width)   # deep copies of one fresh layer
        tree["coupling"] = {"proj_0": torch_linear_init(k_proj0, cfg.text_width, cfg.vision_width)}
        for i in range(1, self.text_depth):
            tree["coupling"][f"proj_{i}"] = jax.tree.map(jnp.copy, shared)
        return tree

    def uses_vision_prompts(self, prompts: P.Tree, present: tuple[str, ...]) -> bool:
        return "vision" in present and "coupling" in prompts

    def image_features(self, prompts: P.Tree, clip_params: Any, images: Array,
                       present: tuple[str, ...] = ("text", "vision")) -> Array:
        if not self.uses_vision_prompts(prompts, present):
            return self.backbone.image(clip_params, images)
        tp, cp = prompts["text"], prompts["coupling"]
        shallow = linear(cp["proj_0"], tp["ctx"])
        deep = [linear(cp[f"proj_{i}"], tp[f"deep_{i}"]) for i in range(1, self.text_depth)] or None
        return self.backbone.image(clip_params, images, shallow, deep)
