"""CoCoOp: CoOp's context plus a meta-net that adds an image-conditioned bias to every context token.

Each image gets its own class prompts: the B x C prompts of a batch go through the text tower as one batch. With
`cocoop.class_chunk = k > 0` the classes go through the tower k at a time (`lax.map` over chunks, each chunk
rematerialised in the backward pass), so memory grows with B x k prompts instead of B x C.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from aple_jax import prompts as P
from aple_jax.clip.backbone import Backbone
from aple_jax.clip.tokenizer import Tokenizer
from aple_jax.losses import normalize
from aple_jax.methods.base import MODALITIES, Method
from aple_jax.methods.maple import linear, torch_linear_init

Array = jax.Array


class CoCoOp(Method):
    name = "cocoop"
    per_image_text = True

    def __init__(self, config: ml_collections.ConfigDict, backbone: Backbone, tokenizer: Tokenizer):
        super().__init__(config, backbone, tokenizer)
        self.class_chunk = int((config.get("cocoop") or {}).get("class_chunk", 0))
        if self.class_chunk < 0:
            raise ValueError(f"cocoop.class_chunk must be >= 0 (0: all classes at once), got {self.class_chunk}")

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
        return img, self.per_image_text_features(clip_params, texts, ctx)

    def per_image_text_features(self, clip_params: Any, texts: P.ClassTexts, ctx: Array) -> Array:
        """(B, C, P) text features of every class prompt under each image's context `ctx` (B, n_ctx, D)."""
        def encode(embeds: Array, eot_idx: Array) -> Array:   # one set of classes, every image, in one text pass
            b, k = ctx.shape[0], embeds.shape[0]
            prompted = jax.vmap(lambda c: P.with_context(embeds, c))(ctx)                   # (B, k, L, D)
            flat = self.backbone.text(clip_params, prompted.reshape(b * k, *embeds.shape[1:]), jnp.tile(eot_idx, b))
            return flat.reshape(b, k, -1)

        c = texts.embeds.shape[0]
        if not 0 < self.class_chunk < c:
            return encode(texts.embeds, texts.eot_idx)
        n = -(-c // self.class_chunk)            # chunks needed; then the smallest equal chunk size that covers C
        k = -(-c // n)
        pad = n * k - c
        embeds = jnp.pad(texts.embeds, ((0, pad), (0, 0), (0, 0))).reshape(n, k, *texts.embeds.shape[1:])
        eot_idx = jnp.pad(texts.eot_idx, (0, pad)).reshape(n, k)
        chunk = jax.checkpoint(encode, prevent_cse=False)   # backward recomputes one chunk at a time
        out = jax.lax.map(lambda xs: chunk(*xs), (embeds, eot_idx))                      # (n, B, k, P)
        return jnp.moveaxis(out, 0, 1).reshape(ctx.shape[0], n * k, -1)[:, :c]
