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


def zero_shot_accuracy(dataset: str, n_per_class: int = 20, seed: int = 0, weights: str = WORLD_CLIP_DIR) -> float:
    """Top-1 over `n_per_class` test images per class rendered with world seed `seed` (CLIP test transform)."""
    cfg, params, tokenizer = load_world_clip(os.path.abspath(weights))
    ds = build_world_dataset(dataset, shots=0, seed=0, image_size=cfg.image_resolution, test_per_class=n_per_class,
                             world_seed=seed)
    encode_image, encode_text = _encoders(cfg)
    ids, eot = tokenizer.tokenize([ds.template.format(c) for c in ds.classnames], cfg.context_length)
    text = np.asarray(encode_text(params, ids, eot))
    correct = 0
    for start in range(0, len(ds.test), EVAL_BATCH):
        rows = [ds.test[i] for i in range(start, min(start + EVAL_BATCH, len(ds.test)))]
        images = np.zeros((EVAL_BATCH, cfg.image_resolution, cfg.image_resolution, 3), np.float32)
        images[:len(rows)] = [test_transform(r["image"], cfg.image_resolution) for r in rows]
        pred = (np.asarray(encode_image(params, images))[:len(rows)] @ text.T).argmax(-1)
        correct += int((pred == np.asarray([r["label"] for r in rows])).sum())
    return correct / len(ds.test)
