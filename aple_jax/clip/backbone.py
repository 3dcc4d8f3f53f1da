"""The frozen CLIP as used by every method: a static module plus functions of its parameters."""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from aple_jax import paths
from aple_jax.clip import model as clip_model
from aple_jax.clip.tokenizer import Tokenizer

Array = jax.Array
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

WEIGHTS_HELP = (
    "Real runs need CLIP weights on local disk. Obtain ViT-B/16 as a Hugging Face directory "
    "(config.json + model.safetensors + vocab.json + merges.txt, e.g. a local copy of openai/clip-vit-base-patch16) "
    "or OpenAI's ViT-B-16.pt, then pass --config.backbone.weights=/path/to/it (and, for a .pt file, "
    "--config.backbone.tokenizer=/path/to/bpe_simple_vocab_16e6.txt.gz). "
    "To try aple-jax without weights, run the built-in demo: python launch.py --config configs/aple.py:demo "
    "--workdir /tmp/aple_demo")


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A frozen CLIP: `model` is static (hashable); parameters are always passed in as arguments."""
    model: clip_model.CLIP

    @property
    def cfg(self) -> clip_model.CLIPConfig:
        return self.model.cfg

    def image(self, params: Any, images: Array, shallow: Array | None = None,
              deep: Sequence[Array] | None = None) -> Array:
        return self.model.apply({"params": params}, images, shallow, deep, method=clip_model.CLIP.encode_image)

    def text(self, params: Any, embeds: Array, eot_idx: Array, deep: Sequence[Array] | None = None) -> Array:
        return self.model.apply({"params": params}, embeds, eot_idx, deep, method=clip_model.CLIP.encode_text)

    def embed(self, params: Any, token_ids: Array) -> Array:
        return self.model.apply({"params": params}, token_ids, method=clip_model.CLIP.embed_tokens)

    @staticmethod
    def logit_scale(params: Any) -> Array:
        return jnp.exp(params["logit_scale"])


# Compiled once per backbone and shape (a fresh `jax.jit(backbone.embed)` per call would compile every time).
@functools.partial(jax.jit, static_argnums=0)
def embed_tokens(backbone: Backbone, params: Any, token_ids: Array) -> Array:
    return backbone.embed(params, token_ids)


@functools.partial(jax.jit, static_argnums=0)
def encode_text(backbone: Backbone, params: Any, embeds: Array, eot_idx: Array) -> Array:
    return backbone.text(params, embeds, eot_idx)


def load_backbone(name: str, weights: str, tokenizer_path: str = "", dtype: str = "float32",
                  remat: bool = False, seed: int = 0) -> tuple[Backbone, Any, Tokenizer]:
    """(backbone, fp32 params, tokenizer) from a weights path, or random weights for the 'tiny' preset."""
    if dtype not in DTYPES:
        raise ValueError(f"backbone.dtype={dtype!r}; expected one of {sorted(DTYPES)}")
    if name == "world" and not weights:   # the tiny CLIP pretrained on the procedural world, shipped in the repo
        from aple_jax.world import WORLD_CLIP_DIR
        weights = WORLD_CLIP_DIR
    if weights:
        weights = paths.local_copy(weights)       # gs:// weights: read from a per-host copy
        tokenizer_path = paths.local_copy(tokenizer_path) if tokenizer_path else ""
        if not os.path.exists(weights):
            raise FileNotFoundError(f"backbone.weights={weights!r} does not exist. {WEIGHTS_HELP}")
        from aple_jax.clip.weights import load_clip
        cfg, params = load_clip(weights)
        tokenizer = Tokenizer.from_path(tokenizer_path or weights)
    elif name == "tiny":
        cfg = clip_model.get_config("tiny")
        params = clip_model.init_params(cfg, seed)
        tokenizer = Tokenizer.builtin_tiny()
    else:
        raise ValueError(f"backbone {name!r} needs backbone.weights. {WEIGHTS_HELP}")
    return Backbone(clip_model.CLIP(cfg, DTYPES[dtype], remat)), params, tokenizer
