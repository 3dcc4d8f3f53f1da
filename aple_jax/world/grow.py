"""A deeper CLIP that computes exactly what a trained one computes: function-preserving growth before more training.

`deepen(cfg, params, vision_layers=8)` inserts new residual blocks into a tower, each a copy of the block before it
with its two residual branches' output projections (attention `out`, MLP `c_proj`) zeroed: a new block adds exactly
0 to the residual stream, so the grown model's features equal the original's bit for bit, and pretraining continues
from there with the extra depth (the gradients of the zeroed projections are not zero, so the branches grow in).
The new blocks are spread evenly: with 4 old and 4 new layers every old block is followed by a new one.

`widen(cfg, params, seed)` doubles the vision tower's width and heads (head size kept): every width channel, head and
MLP unit gets a copy, so the residual stream of the wide tower is the old one twice over (LayerNorm's mean and
variance over `[x, x]` are those over `x`), and each matrix that reads a doubled input is split into two halves
`W/2 + N` and `W/2 - N` that sum back to `W` (N random): the features equal the old ones up to float rounding, and the
unequal halves give the two copies of a channel different gradients, so they grow apart in training (an exact copy
`W/2, W/2` would keep them equal forever).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from aple_jax.clip.model import CLIPConfig
from aple_jax.clip.weights import flatten_params, unflatten_params

ZEROED = (("attn", "out"), ("mlp", "c_proj"))   # the residual branches' output projections


def _zero_branches(block: dict[str, Any]) -> dict[str, Any]:
    out = {name: dict(sub) for name, sub in block.items()}
    for part, proj in ZEROED:
        out[part] = {**out[part], proj: {k: np.zeros_like(v) for k, v in block[part][proj].items()}}
    return out


def grow_tower(blocks: dict[str, Any], layers: int) -> dict[str, Any]:
    """`resblocks.{i}` of a tower grown to `layers` blocks (old ones in order, new ones copied and zeroed after)."""
    old = len(blocks)
    if layers < old:
        raise ValueError(f"cannot grow a {old}-layer tower to {layers} layers")
    extra = [(layers - old) // old + (i < (layers - old) % old) for i in range(old)]   # new blocks after old i
    grown = []
    for i in range(old):
        block = blocks[f"resblocks.{i}"]
        grown.append(block)
        grown.extend(_zero_branches(block) for _ in range(extra[i]))
    return {f"resblocks.{i}": b for i, b in enumerate(grown)}


def deepen(cfg: CLIPConfig, params: Any, vision_layers: int = 0, text_layers: int = 0) -> tuple[CLIPConfig, Any]:
    """(config, params) with the towers grown to `vision_layers` / `text_layers` blocks (0: unchanged)."""
    params = {k: v for k, v in params.items()}
    changes = {}
    for tower, key, layers in (("visual", "vision_layers", vision_layers), ("text", "text_layers", text_layers)):
        if layers and layers != getattr(cfg, key):
            t = dict(params[tower])
            t["transformer"] = grow_tower(t["transformer"], layers)
            params[tower], changes[key] = t, layers
    return dataclasses.replace(cfg, **changes), params


# Vision parameters by the axes that widen: (axis whose units get a copy, axis that reads a doubled input and is split).
WIDENED = (
    (r"class_embedding|ln_\w+/(scale|bias)|attn/out/bias|mlp/c_(fc|proj)/bias", 0, None),
    (r"positional_embedding", 1, None),
    (r"conv1/kernel", 3, None),
    (r"attn/(query|key|value)/bias", 0, None),
    (r"attn/(query|key|value)/kernel|mlp/c_(fc|proj)/kernel", 1, 0),
    (r"attn/out/kernel", 2, 0),
    (r"proj/kernel", None, 0),
)
SPLIT_NOISE = 0.25   # the halves' difference N, in units of the split matrix's standard deviation


def _widen_leaf(name: str, w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    for pattern, copy_axis, split_axis in WIDENED:
        if re.fullmatch(rf"(.*/)?({pattern})", name):
            break
    else:
        raise ValueError(f"widen: no rule for vision parameter {name!r}")
    if copy_axis is not None:
        w = np.concatenate([w, w], axis=copy_axis)
    if split_axis is not None:
        noise = SPLIT_NOISE * float(w.std()) * rng.standard_normal(w.shape).astype(w.dtype)
        w = np.concatenate([w / 2 + noise, w / 2 - noise], axis=split_axis)
    return w


def widen(cfg: CLIPConfig, params: Any, seed: int = 0) -> tuple[CLIPConfig, Any]:
    """(config, params) with the vision tower twice as wide and with twice the heads, computing the same features."""
    rng = np.random.default_rng(seed)
    flat = flatten_params(params["visual"])
    wide = unflatten_params({name: _widen_leaf(name, np.asarray(w), rng) for name, w in sorted(flat.items())})
    return (dataclasses.replace(cfg, vision_width=2 * cfg.vision_width, vision_heads=2 * cfg.vision_heads),
            {**params, "visual": wide})
