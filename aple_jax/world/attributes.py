"""The attribute space of the world and its sampling: every image is one draw of these attributes."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross", "ring", "hexagon")
PLURALS = ("circles", "squares", "triangles", "stars", "hearts", "crosses", "rings", "hexagons")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "orange": (245, 135, 20), "yellow": (240, 220, 40), "green": (40, 175, 60),
    "cyan": (40, 205, 215), "blue": (35, 70, 215), "purple": (135, 50, 185), "pink": (245, 125, 190),
}
COLOUR_NAMES = tuple(COLOURS)
TEXTURES = ("solid", "striped", "dotted", "checkered", "wavy")
COUNTS = ("one", "two", "three", "four")
SIZES = ("small", "large")
POSITIONS = ("in the center", "on the left", "on the right", "at the top", "at the bottom")
BACKGROUNDS = ("grass", "sand", "water", "snow", "bricks", "wood")

# Number of values of each attribute; an image is a dict of int arrays with these keys.
ATTRIBUTES: dict[str, int] = {"shape": len(SHAPES), "colour": len(COLOURS), "texture": len(TEXTURES),
                              "count": len(COUNTS), "size": len(SIZES), "position": len(POSITIONS),
                              "background": len(BACKGROUNDS)}
COUNT_PROBS = (0.55, 0.15, 0.15, 0.15)  # one object in about half of the images

Attributes = dict[str, np.ndarray]


def sample_attributes(rng: np.random.Generator, n: int, fixed: Mapping[str, int | np.ndarray] | None = None
                      ) -> Attributes:
    """`n` random draws of every attribute (int arrays of shape (n,)); `fixed` overrides some of them."""
    fixed = dict(fixed or {})
    unknown = sorted(set(fixed) - set(ATTRIBUTES))
    if unknown:
        raise ValueError(f"unknown world attributes {unknown}; expected some of {sorted(ATTRIBUTES)}")
    out: Attributes = {}
    for name, size in ATTRIBUTES.items():
        p = COUNT_PROBS if name == "count" else None
        drawn = rng.choice(size, size=n, p=p)
        out[name] = np.broadcast_to(np.asarray(fixed[name]), (n,)).astype(np.int64) if name in fixed else drawn
    for name, value in out.items():
        if value.min(initial=0) < 0 or value.max(initial=0) >= ATTRIBUTES[name]:
            raise ValueError(f"attribute {name!r} must lie in 0..{ATTRIBUTES[name] - 1}, got {value.tolist()[:8]}")
    return out


# In a pretraining batch, groups of images share all attributes but one, which their captions always name: hard
# negatives that make every attribute word necessary (colour and background alone would otherwise win the loss).
VARY_PROBS: dict[str, float] = {"shape": 0.5, "colour": 0.1, "texture": 0.15, "count": 0.15, "background": 0.1}


def sample_groups(rng: np.random.Generator, n: int, group: int) -> tuple[Attributes, list[str]]:
    """`n` draws in groups of `group` that differ in one attribute only; also the varying attribute per image."""
    if n % group:
        raise ValueError(f"a batch of {n} images does not split into groups of {group}")
    anchors = sample_attributes(rng, n // group)
    out = {k: np.repeat(v, group) for k, v in anchors.items()}
    names = list(VARY_PROBS)
    varying = rng.choice(len(names), size=n // group, p=list(VARY_PROBS.values()))
    for g, v in enumerate(varying):
        name, rows = names[v], slice(g * group, (g + 1) * group)
        size = ATTRIBUTES[name]
        out[name][rows] = rng.permutation(size)[:group] if size >= group else rng.choice(size, group)
    return out, [names[v] for v in np.repeat(varying, group)]
