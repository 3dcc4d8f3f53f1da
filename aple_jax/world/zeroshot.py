"""Zero-shot top-1 of a CLIP on a world dataset's held-out test images, with the dataset's hand-crafted template."""
from __future__ import annotations

import functools
import os

import jax
import numpy as np

from aple_jax.clip.model import CLIP, CLIPConfig, normalize
from aple_jax.clip.tokenizer import Tokenizer
from aple_jax.data.transforms import test_transform
from aple_jax.world.datasets import build_world_dataset

WORLD_CLIP_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "world_clip")
# The larger world CLIPs, grown from the shipped one and trained on (docs/world.md): 8 vision layers (`world-large`),
# and those twice as wide (`world-xl`, 7.2 times the shipped image FLOPs by XLA's count; tests/test_world.py).
WORLD_CLIP_LARGE_DIR = WORLD_CLIP_DIR + "_large"
WORLD_CLIP_XL_DIR = WORLD_CLIP_DIR + "_xl"
# Backbone names that need no backbone.weights: the shipped world CLIPs.
WORLD_BACKBONES = {"world": WORLD_CLIP_DIR, "world-large": WORLD_CLIP_LARGE_DIR, "world-xl": WORLD_CLIP_XL_DIR}
EVAL_BATCH = 256


@functools.lru_cache(maxsize=2)
def load_world_clip(path: str = WORLD_CLIP_DIR) -> tuple[CLIPConfig, dict, Tokenizer]:
    """(config, params, tokenizer) of a world CLIP directory (the shipped one by default), cached per path."""
    from aple_jax.clip.weights import load_clip

    cfg, params = load_clip(path)
    return cfg, params, Tokenizer.from_path(path)


@functools.lru_cache(maxsize=4)
def _encoders(cfg: CLIPConfig):
    model = CLIP(cfg)
    image = jax.jit(lambda p, x: normalize(model.apply({"params": p}, x, method=CLIP.encode_image)))
    text = jax.jit(lambda p, ids, eot: normalize(model.apply(
        {"params": p}, model.apply({"params": p}, ids, method=CLIP.embed_tokens), eot, method=CLIP.encode_text)))
    return image, text


def image_features(dataset: str, source, weights: str = WORLD_CLIP_DIR) -> np.ndarray:
    """The (N, D) normalised image features of every example of `source` (CLIP test transform)."""
    cfg, params, _ = load_world_clip(os.path.abspath(weights))
    encode_image, _ = _encoders(cfg)
    out = []
    for start in range(0, len(source), EVAL_BATCH):
        rows = [source[i] for i in range(start, min(start + EVAL_BATCH, len(source)))]
        images = np.zeros((EVAL_BATCH, cfg.image_resolution, cfg.image_resolution, 3), np.float32)
        images[:len(rows)] = [test_transform(r["image"], cfg.image_resolution) for r in rows]
        out.append(np.asarray(encode_image(params, images))[:len(rows)])
    return np.concatenate(out)


def class_text_features(classnames: list[str], template: str, weights: str = WORLD_CLIP_DIR) -> np.ndarray:
    """The (C, D) normalised text features of `template` filled with each class name."""
    cfg, params, tokenizer = load_world_clip(os.path.abspath(weights))
    _, encode_text = _encoders(cfg)
    ids, eot = tokenizer.tokenize([template.format(c) for c in classnames], cfg.context_length)
    return np.asarray(encode_text(params, ids, eot))


def zero_shot_accuracy(dataset: str, n_per_class: int = 20, seed: int = 0, weights: str = WORLD_CLIP_DIR) -> float:
    """Top-1 over `n_per_class` test images per class rendered with world seed `seed` (CLIP test transform)."""
    cfg, _, _ = load_world_clip(os.path.abspath(weights))
    ds = build_world_dataset(dataset, shots=0, seed=0, image_size=cfg.image_resolution, test_per_class=n_per_class,
                             world_seed=seed)
    pred = (image_features(dataset, ds.test, weights) @ class_text_features(ds.classnames, ds.template, weights).T)
    return float((pred.argmax(-1) == ds.test.labels).mean())
