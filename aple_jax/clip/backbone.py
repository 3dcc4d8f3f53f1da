"""The frozen CLIP as used by every method: a static module plus functions of its parameters."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from aple_jax import paths
from aple_jax.clip import model as clip_model
from aple_jax.clip.mods import TowerMods
from aple_jax.clip.tokenizer import Tokenizer
from aple_jax.errors import ConfigError, StorageError, WeightsError

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
              deep: Sequence[Array] | None = None, mods: TowerMods | None = None):
        return self.model.apply({"params": params}, images, shallow, deep, mods,
                                method=clip_model.CLIP.encode_image)

    def text(self, params: Any, embeds: Array, eot_idx: Array, deep: Sequence[Array] | None = None,
             mods: TowerMods | None = None) -> Array:
        return self.model.apply({"params": params}, embeds, eot_idx, deep, mods, method=clip_model.CLIP.encode_text)

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


def check_weights(name: str, weights: str) -> str:
    """The weights path to load ('' for the random tiny preset), refusing a missing one before anything loads."""
    from aple_jax.world import WORLD_BACKBONES   # the tiny CLIPs pretrained on the procedural world, in the repo
    if name in WORLD_BACKBONES and not weights:
        return WORLD_BACKBONES[name]
    if weights and not paths.as_path(weights).exists():
        if paths.is_remote(weights):
            raise paths.storage_error(weights, "backbone.weights")     # says whether the bucket is missing
        raise StorageError(f"backbone.weights={weights!r} does not exist", hint=WEIGHTS_HELP)
    if not weights and name != "tiny":
        raise ConfigError(f"backbone {name!r} needs backbone.weights", hint=WEIGHTS_HELP)
    return weights


def load_backbone(name: str, weights: str, tokenizer_path: str = "", dtype: str = "float32",
                  remat: bool = False, seed: int = 0) -> tuple[Backbone, Any, Tokenizer]:
    """(backbone, fp32 params, tokenizer) from a weights path, or random weights for the 'tiny' preset."""
    if dtype not in DTYPES:
        raise ConfigError(f"backbone.dtype={dtype!r}; expected one of {sorted(DTYPES)}")
    weights = check_weights(name, weights)
    if weights:
        weights = paths.local_copy(weights)       # gs:// weights: read from a per-host copy
        tokenizer_path = paths.local_copy(tokenizer_path) if tokenizer_path else ""
        from aple_jax.clip.weights import load_clip
        cfg, params = load_clip(weights)
        tokenizer = Tokenizer.from_path(tokenizer_path or weights)
        check_tokenizer(tokenizer, cfg, weights)
    else:
        cfg = clip_model.get_config("tiny")
        params = clip_model.init_params(cfg, seed)
        tokenizer = Tokenizer.builtin_tiny()
    return Backbone(clip_model.CLIP(cfg, DTYPES[dtype], remat)), params, tokenizer


def check_tokenizer(tokenizer: Tokenizer, cfg: clip_model.CLIPConfig, weights: str) -> None:
    """Refuses a tokenizer whose ids would mean other tokens to the model: another vocabulary size, start or end
    ids outside the token embedding, or another context length."""
    where = f"tokenizer {tokenizer.source} and weights {weights}"
    hint = "pass the tokenizer that came with these weights (backbone.tokenizer=...)"
    if tokenizer.vocab_size != cfg.vocab_size:
        raise WeightsError(f"{where} do not match: the tokenizer has {tokenizer.vocab_size} tokens, the model's "
                           f"token embedding {cfg.vocab_size} rows", hint=hint)
    bad = {k: v for k, v in (("start", tokenizer.sot_id), ("end", tokenizer.eot_id)) if not 0 <= v < cfg.vocab_size}
    if bad or tokenizer.sot_id == tokenizer.eot_id:
        raise WeightsError(f"{where} do not match: start/end token ids {tokenizer.sot_id}/{tokenizer.eot_id} must "
                           f"be two different ids below the model's {cfg.vocab_size} tokens", hint=hint)
    max_length = tokenizer.max_length
    if max_length is not None and max_length != cfg.context_length:
        raise WeightsError(f"{where} do not match: the tokenizer's context length is {max_length} tokens, the "
                           f"model's {cfg.context_length}", hint=hint)
