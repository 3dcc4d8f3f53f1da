"""A built-in dataset of procedural images: each class is a coloured shape ("red circle") on a noisy background."""
from __future__ import annotations

import numpy as np

from aple_jax.data.records import Datum, RecordSource
from aple_jax.data.split_files import RawSplits

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40),
    "purple": (140, 60, 190), "orange": (240, 140, 30), "cyan": (40, 200, 210), "pink": (240, 120, 180),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
MAX_CLASSES = len(COLOURS) * len(SHAPES)
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def class_parts(label: int) -> tuple[str, str]:
    """(colour, shape) of a class; consecutive labels vary both, so any prefix of classes mixes them."""
    q, r = divmod(label, len(COLOURS))
    return list(COLOURS)[r], SHAPES[(r + q) % len(SHAPES)]


def synthetic_classnames(num_classes: int) -> list[str]:
    """Readable names such as "red circle", ordered by label."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"the synthetic dataset has 1..{MAX_CLASSES} classes, got num_classes={num_classes}")
    return [" ".join(class_parts(y)) for y in range(num_classes)]


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Pixels inside `shape` in coordinates scaled so the shape spans [-1, 1]."""
    ax, ay, rr = np.abs(dx), np.abs(dy), dx**2 + dy**2
    return {
        "circle": rr <= 1.0,
        "square": np.maximum(ax, ay) <= 0.8,
        "triangle": (dy <= 0.8) & (ax <= (dy + 1.0) * 0.55),
        "diamond": ax + ay <= 1.0,
        "cross": ((ax <= 0.3) & (ay <= 1.0)) | ((ay <= 0.3) & (ax <= 1.0)),
        "ring": (rr <= 1.0) & (rr >= 0.45),
    }[shape]


def render(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 (size, size, 3) image of class `label` at a random position and scale on a noisy background."""
    colour, shape = class_parts(label)
    grey = rng.uniform(60, 200)
    image = grey + rng.uniform(-25, 25, size=3) + rng.normal(0, 18, size=(size, size, 3))
    radius = rng.uniform(0.22, 0.4) * size
    cy, cx = rng.uniform(radius, size - radius, size=2)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    mask = _shape_mask(shape, (xx - cx) / radius, (yy - cy) / radius)
    fill = np.asarray(COLOURS[colour], np.float64) + rng.uniform(-20, 20, size=3)
    image[mask] = fill + rng.normal(0, 8, size=(int(mask.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8)


class SyntheticImages:
    """Loader: key k of a split is instance k % per_class of class k // per_class; content ignores the seed."""

    def __init__(self, split: str, per_class: int, image_size: int):
        self.split, self.per_class, self.image_size = split, per_class, image_size

    def __call__(self, key: int) -> np.ndarray:
        rng = np.random.default_rng([_SPLIT_IDS[self.split], key, self.image_size])
        return render(key // self.per_class, self.image_size, rng)

    def __repr__(self) -> str:
        return f"SyntheticImages({self.split!r}, per_class={self.per_class}, size={self.image_size})"


def _records(num_classes: int, per_class: int) -> list[Datum]:
    names = synthetic_classnames(num_classes)
    return [Datum(y * per_class + i, y, names[y]) for y in range(num_classes) for i in range(per_class)]


def synthetic_splits(num_classes: int = 10, train_per_class: int = 16, val_per_class: int = 4,
                     test_per_class: int = 8) -> RawSplits:
    """Records of the three splits (class-major order)."""
    return RawSplits(_records(num_classes, train_per_class), _records(num_classes, val_per_class),
                     _records(num_classes, test_per_class))


def synthetic_loaders(train_per_class: int = 16, val_per_class: int = 4, test_per_class: int = 8,
                      image_size: int = 32) -> dict[str, SyntheticImages]:
    """One loader per split."""
    per_class = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    return {s: SyntheticImages(s, n, image_size) for s, n in per_class.items()}


def synthetic_source(split: str = "test", num_classes: int = 10, per_class: int = 8,
                     image_size: int = 32) -> RecordSource:
    """A standalone source of one split, e.g. for demos and benchmarks."""
    return RecordSource(_records(num_classes, per_class), SyntheticImages(split, per_class, image_size))
