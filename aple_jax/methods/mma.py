"""MMA (Multi-Modal Adapter): a bottleneck adapter per block in both towers with a projection shared between them,
CE on "a photo of a {class}."; no prompt tokens.

As the official `clip/model.py` has it, block l (from 1) in `[start, end]` outputs
`x + attn(ln_1 x) + mlp(...) + s * up(shared(down(ln_1 x)))` with `down` = Linear + ReLU (width -> dim),
`shared` = Linear + ReLU (dim -> dim, one per block, used by both towers), `up` = Linear (dim -> width), and a gradient
scale layer on each side: the adapter's input gradient is scaled by s and its output's by 1/s, so every adapter
leaf's gradient is 1/s times its true one while the gradient reaching the residual stream stays true. Kernels start
as PyTorch's `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, biases at zero.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from aple_jax import prompts as P
from aple_jax.clip.backbone import Backbone
from aple_jax.clip.mods import TowerMods, scale_gradient
from aple_jax.clip.tokenizer import Tokenizer
from aple_jax.methods.base import MODALITIES, Method, Phase

Array = jax.Array


def kaiming_linear(rng: Array, fan_in: int, fan_out: int) -> dict[str, Array]:
    """nn.Linear with `kaiming_normal_(mode="fan_out", nonlinearity="relu")` and a zero bias."""
    std = (2.0 / fan_out) ** 0.5
    return {"kernel": std * jax.random.normal(rng, (fan_in, fan_out), jnp.float32),
            "bias": jnp.zeros((fan_out,), jnp.float32)}


def dense(p: dict[str, Array], x: Array) -> Array:
    return x @ p["kernel"].astype(x.dtype) + p["bias"].astype(x.dtype)


class MMA(Method):
    name = "mma"
    text_side = ("text/", "shared/")

    def __init__(self, config: ml_collections.ConfigDict, backbone: Backbone, tokenizer: Tokenizer):
        super().__init__(config, backbone, tokenizer)
        mc = config.mma
        layers = min(backbone.cfg.text_layers, backbone.cfg.vision_layers)
        if not 1 <= mc.start <= mc.end <= layers or mc.dim < 1 or mc.scale <= 0:
            raise ValueError(f"mma.start={mc.start}, mma.end={mc.end} must satisfy 1 <= start <= end <= {layers} "
                             f"(blocks from 1), mma.dim={mc.dim} >= 1 and mma.scale={mc.scale} > 0")
        self.blocks = tuple(range(mc.start - 1, mc.end))   # from 0
        self.dim, self.scale, self.text_prefix = int(mc.dim), float(mc.scale), mc.text_prefix

    # ------------------------------------------------------------------------------------------------ the tree
    def init(self, rng: Array, clip_params: Any, classnames: Sequence[str] = ()) -> P.Tree:
        cfg, d = self.backbone.cfg, self.dim
        tree: P.Tree = {"text": {}, "vision": {}, "shared": {}}
        for i in self.blocks:
            rng, *keys = jax.random.split(rng, 6)
            for tower, width, (k_down, k_up) in (("text", cfg.text_width, keys[:2]),
                                                 ("vision", cfg.vision_width, keys[2:4])):
                tree[tower][f"block_{i}"] = {"down": kaiming_linear(k_down, width, d),
                                             "up": kaiming_linear(k_up, d, width)}
            tree["shared"][f"block_{i}"] = kaiming_linear(keys[4], d, d)
        return tree

    def mods(self, prompts: P.Tree, tower: str) -> TowerMods | None:
        if tower not in prompts:
            return None
        adapters, shared, s = prompts[tower], prompts["shared"], self.scale

        def residual(i: int, h: Array) -> Array | None:
            if f"block_{i}" not in adapters:
                return None
            a = adapters[f"block_{i}"]
            y = jax.nn.relu(dense(a["down"], scale_gradient(h, s)))
            y = jax.nn.relu(dense(shared[f"block_{i}"], y))
            y = s * dense(a["up"], y)
            return scale_gradient(y, 1.0 / s) if s else y   # s = 0 (plain CLIP) only in tests

        return TowerMods(residual=residual)

    # ------------------------------------------------------------------------------------------- class texts
    def class_texts(self, clip_params: Any, classnames: list[str], template: str = "") -> P.ClassTexts:
        """`"{mma.text_prefix} {class}."` for every dataset (the official TEXT_CTX_INIT, "a photo of a")."""
        return P.build_class_texts(self.backbone, clip_params, self.tokenizer, classnames, self.text_prefix)

    def eval_texts(self, classnames: list[str], dataset_template: str) -> list[str]:
        return P.class_prompt_strings(classnames, self.text_prefix)

    # ---------------------------------------------------------------------------------------------- features
    def text_features(self, prompts: P.Tree, clip_params: Any, texts: P.ClassTexts,
                      present: tuple[str, ...] = MODALITIES) -> Array:
        mods = self.mods(prompts, "text") if "text" in present else None
        return self.backbone.text(clip_params, texts.embeds, texts.eot_idx, mods=mods)

    def image_features(self, prompts: P.Tree, clip_params: Any, images: Array,
                       present: tuple[str, ...] = MODALITIES) -> Array:
        mods = self.mods(prompts, "vision") if "vision" in present else None
        return self.backbone.image(clip_params, images, mods=mods)

    def phases(self) -> list[Phase]:
        c = self.config
        return [Phase("train", (".*",), c.optim.epochs, c.optim.lr, MODALITIES)]
