"""Per-example work of the input pipeline (runs in grain workers; imports no JAX).

Positions are laid out so that every process feeds its slice of each global batch: local position t is element
j = t % L of local batch b = t // L, i.e. element `step * B + p * L + j` of the epoch's order (B global, L local
batch size, p the process index). Randomness is keyed by (seed, epoch, example index), so results do not depend
on the number of workers, threads or processes.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from aple_jax.data.transforms import CLIP_CROP_SCALE, test_transform, train_transform

_PERMUTATION, _AUGMENT = 0, 1  # stream tags of the seed sequences


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """Where this process's examples sit in the global batches."""
    global_batch_size: int
    local_batch_size: int
    process_index: int

    def global_position(self, t: int) -> tuple[int, int]:
        """(global batch number, position inside an epoch's ordering counted from that batch's start)."""
        b, j = divmod(t, self.local_batch_size)
        return b, self.process_index * self.local_batch_size + j


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of epoch `epoch`: a permutation of range(n) seeded by (seed, epoch)."""
    return np.random.default_rng([_PERMUTATION, seed, epoch]).permutation(n)


class TrainElement:
    """Local position -> augmented example {"image": float32 (S, S, 3), "label": int32, "index": int32}.

    "index" is the example's position in `source`, the key of per-example caches (the zero-shot teacher's).
    """

    def __init__(self, source: Sequence[dict[str, Any]], layout: BatchLayout, image_size: int, seed: int,
                 augment: bool, crop_scale: tuple[float, float] = CLIP_CROP_SCALE):
        self.source, self.layout, self.image_size, self.seed, self.augment = source, layout, image_size, seed, augment
        self.crop_scale = tuple(crop_scale)
        self.steps_per_epoch = len(source) // layout.global_batch_size
        self._perm: tuple[int, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_perm": None}

    def _order(self, epoch: int) -> np.ndarray:
        cached = self._perm
        if cached is None or cached[0] != epoch:
            cached = (epoch, epoch_permutation(self.seed, epoch, len(self.source)))
            self._perm = cached
        return cached[1]

    def __call__(self, t: int) -> dict[str, np.ndarray]:
        b, offset = self.layout.global_position(t)
        epoch, step = divmod(b, self.steps_per_epoch)
        index = int(self._order(epoch)[step * self.layout.global_batch_size + offset])
        example = self.source[index]
        if self.augment:
            rng = np.random.default_rng([_AUGMENT, self.seed, epoch, index])
            image = train_transform(example["image"], self.image_size, rng, self.crop_scale)
        else:
            image = test_transform(example["image"], self.image_size)
        return {"image": image, "label": np.int32(example["label"]), "index": np.int32(index)}


class EvalElement:
    """Local position -> test-transformed example with "mask"; positions past the end are zero padding. An example
    its source marks `"valid": False` (an unreadable file among a user's images) is masked out too."""

    def __init__(self, source: Sequence[dict[str, Any]], layout: BatchLayout, image_size: int):
        self.source, self.layout, self.image_size = source, layout, image_size

    def __call__(self, t: int) -> dict[str, np.ndarray]:
        b, offset = self.layout.global_position(t)
        index = b * self.layout.global_batch_size + offset
        if index >= len(self.source):
            return {"image": np.zeros((self.image_size, self.image_size, 3), np.float32), "label": np.int32(0),
                    "mask": np.bool_(False)}
        example = self.source[index]
        return {"image": test_transform(example["image"], self.image_size), "label": np.int32(example["label"]),
                "mask": np.bool_(example.get("valid", True))}
