"""OpenAI CLIP (ViT) in Flax linen, with prompt insertion points in both towers.

Parameter names follow OpenAI's state dict (and scenic): `visual/transformer/resblocks.{i}/attn/query/kernel`,
`text/ln_final/scale`, `logit_scale`, so converting OpenAI checkpoints is nearly the identity.

Prompts are arguments, never parameters:
- text tower: encodes given token embeddings `(N, L, D)`, pools at a given EOT index, and optional deep prompts
  `deep[k]` of shape `(n, D)` replace positions `1..n` before block `k + 1`;
- vision tower: optional shallow prompts `(n, D)` are appended after the patch tokens before `ln_pre`; optional
  deep prompts `deep[k]` of shape `(n, D)` replace the last `n` tokens before block `k + 1`.
Beyond prompts, both towers take a `mods.TowerMods` (residual adapters, hooks on the attention projections,
inserted tokens; see aple_jax/clip/mods.py). With no prompts and no mods both towers compute plain CLIP.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from aple_jax.clip.mods import TowerMods

Array = jax.Array
Params = Any


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """Shapes of a ViT CLIP; `*_heads` default to OpenAI's width // 64."""
    embed_dim: int = 512
    image_resolution: int = 224
    vision_layers: int = 12
    vision_width: int = 768
    vision_patch_size: int = 16
    vision_heads: int = 12
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_heads: int = 8
    text_layers: int = 12
    mlp_ratio: int = 4
    activation: str = "quick_gelu"

    @property
    def num_patches(self) -> int:
        return (self.image_resolution // self.vision_patch_size) ** 2


PRESETS: dict[str, CLIPConfig] = {
    "ViT-B/32": CLIPConfig(vision_patch_size=32),
    "ViT-B/16": CLIPConfig(vision_patch_size=16),
    "ViT-L/14": CLIPConfig(embed_dim=768, vision_layers=24, vision_width=1024, vision_patch_size=14,
                           vision_heads=16, text_width=768, text_heads=12),
    "tiny": CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
                       vision_heads=2, vocab_size=1000, text_width=64, text_heads=2, text_layers=2),
}


def get_config(name: str) -> CLIPConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown CLIP preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]


def quick_gelu(x: Array) -> Array:
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": lambda x: jax.nn.gelu(x, approximate=False)}


def _layer_norm(name: str) -> nn.Module:
    # A plain nn.LayerNorm keeps the parameter path `<name>/{scale,bias}` (no extra nesting level).
    return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


class Attention(nn.Module):
    """Multi-head self-attention with OpenAI's q/k/v/out projections and `jax.nn.dot_product_attention`."""
    num_heads: int
    causal: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, projection=None) -> Array:
        """`projection(name, input, output)`, when given, replaces each projection's output (all (..., width))."""
        width = x.shape[-1]
        head_dim = width // self.num_heads

        def proj(name: str) -> Array:
            y = nn.DenseGeneral((self.num_heads, head_dim), dtype=self.dtype, name=name)(x)
            return y if projection is None else projection(name, x, y.reshape(x.shape)).reshape(y.shape)

        q, k, v = proj("query"), proj("key"), proj("value")
        y = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal)
        out = nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, name="out")(y)
        return out if projection is None else projection("out", y.reshape(out.shape), out)


class MLP(nn.Module):
    hidden: int
    activation: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = nn.Dense(self.hidden, dtype=self.dtype, name="c_fc")(x)
        h = ACTIVATIONS[self.activation](h)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="c_proj")(h)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN residual block: x + attn(ln_1(x)), then x + mlp(ln_2(x)).

    The residual stream `x` is fp32 under every compute dtype: the attention and MLP run in `dtype` and their
    outputs are added in fp32, so bf16 rounds each block's update, never the accumulated stream. `residual(h)` of
    `h = ln_1(x)` is added last and `projection` goes to the attention (TowerMods; static arguments under remat).
    """
    num_heads: int
    mlp_ratio: int
    activation: str
    causal: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, residual=None, projection=None) -> Array:
        h1 = _layer_norm("ln_1")(x).astype(self.dtype)
        x = x + Attention(self.num_heads, self.causal, self.dtype, name="attn")(h1, projection).astype(x.dtype)
        h = _layer_norm("ln_2")(x).astype(self.dtype)
        x = x + MLP(x.shape[-1] * self.mlp_ratio, self.activation, self.dtype, name="mlp")(h).astype(x.dtype)
        extra = None if residual is None else residual(h1)
        return x if extra is None else x + extra.astype(x.dtype)


class Transformer(nn.Module):
    """A stack of blocks; `replace(x, k)` inserts the deep prompts that go before block k; `mods` adds residuals,
    projection hooks and inserted tokens."""
    layers: int
    num_heads: int
    mlp_ratio: int
    activation: str
    causal: bool
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x: Array, deep_prompts: Sequence[Array] | None, replace, mods: TowerMods | None = None) -> Array:
        block_cls = nn.remat(ResidualAttentionBlock, static_argnums=(2, 3)) if self.remat else ResidualAttentionBlock
        n_deep = 0 if deep_prompts is None else len(deep_prompts)
        if n_deep >= self.layers:
            raise ValueError(f"{n_deep} deep prompt layers need more than the tower's {self.layers} layers")
        inserted = _check_inserted(mods, self.layers)
        for i in range(self.layers):
            if 1 <= i <= n_deep:
                x = replace(x, deep_prompts[i - 1].astype(x.dtype))
            if inserted and i >= mods.inserted_from:
                x = _insert_after_first(x, inserted[i - mods.inserted_from], replace=i > mods.inserted_from,
                                        beta=mods.inserted_beta)
            residual, projection = (None, None) if mods is None else mods.block_hooks(i)
            x = block_cls(self.num_heads, self.mlp_ratio, self.activation, self.causal, self.dtype,
                          name=f"resblocks.{i}")(x, residual, projection)
        return x


def _check_inserted(mods: TowerMods | None, layers: int) -> Sequence[Array] | None:
    """The inserted tokens, one (n, D) per block from `inserted_from` to the last, or None."""
    if mods is None or mods.inserted is None:
        return None
    expected = layers - mods.inserted_from
    if not 0 <= mods.inserted_from < layers or len(mods.inserted) != expected:
        raise ValueError(f"inserted tokens from block {mods.inserted_from} of {layers} need {expected} token sets, "
                         f"got {len(mods.inserted)}")
    return mods.inserted


def _insert_after_first(h: Array, tokens: Array, replace: bool, beta: float = 1.0) -> Array:
    """Tokens (n, D) placed after the first token; `replace`: over the n tokens placed there before, as
    `beta * tokens + (1 - beta) * those` when `beta` is not 1."""
    n = tokens.shape[-2]
    rest = h[:, 1 + n:] if replace else h[:, 1:]
    new = _broadcast_rows(tokens, h.shape[0]).astype(h.dtype)
    if replace and beta != 1.0:
        new = beta * new + (1.0 - beta) * h[:, 1:1 + n]
    return jnp.concatenate([h[:, :1], new, rest], axis=1)


def _broadcast_rows(prompt: Array, batch: int) -> Array:
    """A prompt `(n, D)` shared by all rows, or `(batch, n, D)` per row, as `(batch, n, D)`."""
    return jnp.broadcast_to(prompt, (batch,) + prompt.shape[-2:]) if prompt.ndim == 2 else prompt


class VisionTransformer(nn.Module):
    cfg: CLIPConfig
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, images: Array, shallow_prompts: Array | None = None,
                 deep_prompts: Sequence[Array] | None = None, mods: TowerMods | None = None):
        """(B, embed_dim) features; with `mods.inserted_proj` also the inserted tokens' pooled (B, embed_dim)."""
        cfg = self.cfg
        expected = (cfg.image_resolution, cfg.image_resolution, 3)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"images must have shape (batch, {expected[0]}, {expected[1]}, 3) (NHWC) for this "
                             f"CLIP, got {tuple(images.shape)}")
        width = cfg.vision_width
        x = nn.Conv(width, (cfg.vision_patch_size,) * 2, strides=(cfg.vision_patch_size,) * 2, padding="VALID",
                    use_bias=False, dtype=self.dtype, name="conv1")(images.astype(self.dtype))
        b = x.shape[0]
        x = x.reshape(b, -1, width)
        cls = self.param("class_embedding", nn.initializers.normal(width ** -0.5), (width,))
        pos = self.param("positional_embedding", nn.initializers.normal(width ** -0.5), (cfg.num_patches + 1, width))
        x = x.astype(jnp.float32)   # the residual stream stays fp32; only the blocks' matmuls run in self.dtype
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, width)), x], axis=1) + pos.astype(x.dtype)
        if shallow_prompts is not None:
            x = jnp.concatenate([x, _broadcast_rows(shallow_prompts, b).astype(x.dtype)], axis=1)
        x = _layer_norm("ln_pre")(x)

        def replace_last(h: Array, prompt: Array) -> Array:
            n = prompt.shape[-2]
            return jnp.concatenate([h[:, :h.shape[1] - n], _broadcast_rows(prompt, h.shape[0])], axis=1)

        x = Transformer(cfg.vision_layers, cfg.vision_heads, cfg.mlp_ratio, cfg.activation, False, self.dtype,
                        self.remat, name="transformer")(x, deep_prompts, replace_last, mods)
        ln_post = _layer_norm("ln_post")
        features = nn.Dense(cfg.embed_dim, use_bias=False, dtype=jnp.float32, name="proj")(ln_post(x[:, 0]))
        if mods is None or mods.inserted_proj is None:
            return features
        if mods.inserted is None:
            raise ValueError("mods.inserted_proj pools inserted tokens, but no tokens are inserted")
        n = mods.inserted[0].shape[-2]
        return features, ln_post(x[:, 1:1 + n]).mean(axis=1) @ mods.inserted_proj


class TextTransformer(nn.Module):
    cfg: CLIPConfig
    dtype: Any = jnp.float32
    remat: bool = False

    def setup(self) -> None:
        cfg = self.cfg
        self.token_embedding = nn.Embed(cfg.vocab_size, cfg.text_width, embedding_init=nn.initializers.normal(0.02))
        self.positional_embedding = self.param("positional_embedding", nn.initializers.normal(0.01),
                                               (cfg.context_length, cfg.text_width))
        self.transformer = Transformer(cfg.text_layers, cfg.text_heads, cfg.mlp_ratio, cfg.activation, True,
                                       self.dtype, self.remat)
        self.ln_final = _layer_norm("ln_final")
        self.text_projection = nn.Dense(cfg.embed_dim, use_bias=False, dtype=jnp.float32)

    def embed(self, token_ids: Array) -> Array:
        """Token embeddings (no positions) of integer ids, for building prompts."""
        return self.token_embedding(token_ids)

    def __call__(self, token_embeds: Array, eot_idx: Array, deep_prompts: Sequence[Array] | None = None,
                 mods: TowerMods | None = None) -> Array:
        length = token_embeds.shape[1]
        n_inserted = 0 if mods is None or mods.inserted is None else mods.inserted[0].shape[-2]
        if n_inserted and deep_prompts:
            raise ValueError("the text tower takes deep prompts or inserted tokens after SOT, not both")
        if length > self.cfg.context_length:
            raise ValueError(f"text of {length} tokens exceeds the context length {self.cfg.context_length}")
        x = (token_embeds + self.positional_embedding[:length]).astype(jnp.float32)   # fp32 residual stream

        def replace_ctx(h: Array, prompt: Array) -> Array:
            n = prompt.shape[-2]
            return jnp.concatenate([h[:, :1], _broadcast_rows(prompt, h.shape[0]), h[:, 1 + n:]], axis=1)

        x = self.transformer(x, deep_prompts, replace_ctx, mods)
        x = self.ln_final(x)
        eot_idx = eot_idx.astype(jnp.int32) + n_inserted   # inserted tokens after SOT move the EOT on
        pooled = jnp.take_along_axis(x, eot_idx[:, None, None], axis=1)[:, 0]
        return self.text_projection(pooled)


class CLIP(nn.Module):
    """Both towers plus `logit_scale`; call `encode_image`, `encode_text` or `embed_tokens` via `apply`."""
    cfg: CLIPConfig
    dtype: Any = jnp.float32
    remat: bool = False

    def setup(self) -> None:
        self.visual = VisionTransformer(self.cfg, self.dtype, self.remat)
        self.text = TextTransformer(self.cfg, self.dtype, self.remat)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(jnp.log(1 / 0.07)), ())

    def encode_image(self, images: Array, shallow_prompts: Array | None = None,
                     deep_prompts: Sequence[Array] | None = None, mods: TowerMods | None = None):
        return self.visual(images, shallow_prompts, deep_prompts, mods)

    def encode_text(self, token_embeds: Array, eot_idx: Array, deep_prompts: Sequence[Array] | None = None,
                    mods: TowerMods | None = None) -> Array:
        return self.text(token_embeds, eot_idx, deep_prompts, mods)

    def embed_tokens(self, token_ids: Array) -> Array:
        return self.text.embed(token_ids)

    def __call__(self, images: Array, token_ids: Array) -> tuple[Array, Array]:
        """Plain CLIP logits (image x text) for token ids whose EOT is the largest id."""
        img = normalize(self.encode_image(images))
        txt = normalize(self.encode_text(self.embed_tokens(token_ids), jnp.argmax(token_ids, axis=-1)))
        logits = jnp.exp(self.logit_scale) * img @ txt.T
        return logits, logits.T


def normalize(x: Array) -> Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


@functools.lru_cache(maxsize=None)
def _compiled_init(cfg: CLIPConfig) -> Any:
    """One jitted `CLIP(cfg).init` per config, so repeated inits do not compile again."""
    return jax.jit(CLIP(cfg).init)


def init_params(cfg: CLIPConfig, seed: int = 0) -> Params:
    """Random fp32 parameters of a CLIP with this config (tests and benchmarks)."""
    images = jnp.zeros((1, cfg.image_resolution, cfg.image_resolution, 3), jnp.float32)
    tokens = jnp.zeros((1, cfg.context_length), jnp.int32)
    return _compiled_init(cfg)(jax.random.key(seed), images, tokens)["params"]
