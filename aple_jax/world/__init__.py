"""A laptop-scale procedural image-caption world and the tiny CLIP pretrained on it (docs/world.md).

Datasets: `build_world_dataset(name, shots=..., seed=...)` for names in `WORLD_DATASETS` (`SUITE`: the 11 of the method comparison); the shipped CLIP lives in
`WORLD_CLIP_DIR` (load it with `aple_jax.clip.weights.load_clip`); `zero_shot_accuracy(name, n_per_class, seed)`
is the function that produced the accuracies recorded in its training.json.
"""
from aple_jax.world.datasets import BASE_DATASETS, SUITE, TEMPLATES, WORLD_DATASETS, build_world_dataset
from aple_jax.world.shifts import SHIFTS
from aple_jax.world.zeroshot import (WORLD_BACKBONES, WORLD_CLIP_DIR, WORLD_CLIP_LARGE_DIR, WORLD_CLIP_XL_DIR,
                                     load_world_clip, zero_shot_accuracy)

__all__ = ["BASE_DATASETS", "SHIFTS", "SUITE", "TEMPLATES", "WORLD_BACKBONES", "WORLD_CLIP_DIR", "WORLD_CLIP_LARGE_DIR",
           "WORLD_CLIP_XL_DIR", "WORLD_DATASETS", "build_world_dataset",
           "load_world_clip", "zero_shot_accuracy"]
