"""A deeper CLIP that computes exactly what a trained one computes: function-preserving growth before more training.

`deepen(cfg, params, vision_layers=8)` inserts new residual blocks into a tower, each a copy of the block before it
with its two residual branches' output projections (attention `out`, MLP `c_proj`) zeroed: a new block adds exactly
0 to the residual stream, so the grown model's features equal the original's bit for bit, and pretraining continues
from there with the extra depth (the gradients of the zeroed projections are not zero, so the branches grow in).
The new blocks are spread evenly: with 4 old and 4 new layers every old block is followed by a new one.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from aple_jax.clip.model import CLIPConfig

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
