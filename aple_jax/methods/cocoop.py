"""CoCoOp: CoOp's context plus a meta-net that adds an image-conditioned bias to every context token.

Each image gets its own class prompts, so the text tower runs once per image: batched with vmap over images.
"""
from __future__ import annotations

from typing import Any

import jax

from aple_jax import prompts as P
from aple_jax.losses import normalize
from aple_jax.methods.base import MODALITIES, Method
from aple_jax.methods.maple import linear, torch_linear_init

Array = jax.Array


class CoCoOp(Method):
    name = "cocoop"
    per_image_text = True

    def init(self, rng: Array, clip_params: Any) -> P.Tree:
        k_ctx, k1, k2 = jax.random.split(rng, 3)
        tree = super().init(k_ctx, clip_params)
        vis_dim, ctx_dim = self.backbone.cfg.embed_dim, self.backbone.cfg.text_width
        hidden = vis_dim // 16
        tree["meta_net"] = {"linear1": torch_linear_init(k1, vis_dim, hidden),
                            "linear2": torch_linear_init(k2, hidden, ctx_dim)}
        return tree

    def features(self, prompts: P.Tree, clip_params: Any, texts: P.ClassTexts, images: Array,
                 present: tuple[str, ...] = MODALITIES, text_cache: Array | None = None) -> tuple[Array, Array]:
        """(image features (B, P), per-image class text features (B, C, P))."""
        img = self.backbone.image(clip_params, images)
        mn = prompts["meta_net"]
        bias = linear(mn["linear2"], jax.nn.relu(linear(mn["linear1"], normalize(img))))   # (B, ctx_dim)
        ctx = prompts["text"]["ctx"][None] + bias[:, None, :]                              # (B, n_ctx, ctx_dim)

        def per_image(c: Array) -> Array:
            return self.backbone.text(clip_params, P.with_context(texts.embeds, c), texts.eot_idx)

        return img, jax.vmap(per_image)(ctx)
