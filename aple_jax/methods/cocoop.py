"""CoCoOp: CoOp's context plus a meta-net that adds an image-conditioned bias to every context token.

Each image gets its own class prompts: B x C prompts per batch. With `cocoop.prompts_per_pass = k > 0` they go
through the text tower at most k at a time, in balanced passes (`lax.map`, each pass rematerialised in the backward
pass), so memory and the working set of every tower op stay those of k prompts at any batch size and class count;
with k = 0, or B x C <= k, all prompts go in one pass.
"""
from __future__ import annotations

from typing import Any, Sequence

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
        self.prompts_per_pass = int((config.get("cocoop") or {}).get("prompts_per_pass", 0))
        if self.prompts_per_pass < 0:
            raise ValueError(f"cocoop.prompts_per_pass must be >= 0 (0: all prompts in one pass), "
                             f"got {self.prompts_per_pass}")

    def init(self, rng: Array, clip_params: Any, classnames: Sequence[str] = ()) -> P.Tree:
        k_ctx, k1, k2 = jax.random.split(rng, 3)
        tree = super().init(k_ctx, clip_params, classnames)
        vis_dim, ctx_dim = self.backbone.cfg.embed_dim, self.backbone.cfg.text_width
        hidden = vis_dim // 16
        tree["meta_net"] = {"linear1": torch_linear_init(k1, vis_dim, hidden),
                            "linear2": torch_linear_init(k2, hidden, ctx_dim)}
        return tree

    def features(self, prompts: P.Tree, clip_params: Any, texts: P.ClassTexts, images: Array,
                 present: tuple[str, ...] = MODALITIES, text_cache: Array | None = None,
                 rng: Array | None = None) -> tuple[Array, Array]:
        """(image features (B, P), per-image class text features (B, C, P))."""
        img = self.backbone.image(clip_params, images)
        mn = prompts["meta_net"]
        bias = linear(mn["linear2"], jax.nn.relu(linear(mn["linear1"], normalize(img))))   # (B, ctx_dim)
        ctx = prompts["text"]["ctx"][None] + bias[:, None, :]                              # (B, n_ctx, ctx_dim)
        return img, self.per_image_text_features(clip_params, texts, ctx)

    def per_image_text_features(self, clip_params: Any, texts: P.ClassTexts, ctx: Array) -> Array:
        """(B, C, P) text features of every class prompt under each image's context `ctx` (B, n_ctx, D)."""
        b, c = ctx.shape[0], texts.embeds.shape[0]
        prompted = jax.vmap(lambda x: P.with_context(texts.embeds, x))(ctx)               # (B, C, L, D)
        prompted = prompted.reshape(b * c, *texts.embeds.shape[1:])
        eot_idx = jnp.tile(texts.eot_idx, b)
        total = b * c
        if not 0 < self.prompts_per_pass < total:
            return self.backbone.text(clip_params, prompted, eot_idx).reshape(b, c, -1)
        n = -(-total // self.prompts_per_pass)   # passes needed; then the smallest equal pass that covers B x C
        k = -(-total // n)
        pad = n * k - total
        prompted = jnp.pad(prompted, ((0, pad), (0, 0), (0, 0))).reshape(n, k, *prompted.shape[1:])
        eot_idx = jnp.pad(eot_idx, (0, pad)).reshape(n, k)
        encode = jax.checkpoint(lambda e, i: self.backbone.text(clip_params, e, i), prevent_cse=False)
        out = jax.lax.map(lambda xs: encode(*xs), (prompted, eot_idx))                     # (n, k, P)
        return out.reshape(n * k, -1)[:total].reshape(b, c, -1)
