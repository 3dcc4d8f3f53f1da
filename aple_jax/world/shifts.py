"""Domain shifts of rendered images, the world's ImageNet-Sketch/-R/-A: sketch, noise, invert, blur, swap, and the
two a camera makes, a colour cast (tint) and dim light."""
from __future__ import annotations

import numpy as np

SHIFTS = ("Sketch", "Noise", "Invert", "Blur", "Swap", "Tint", "Dim")
AMBER = np.array([255.0, 190.0, 60.0], np.float32)


def _box_blur(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window with edge padding, on (n, H, W, C) floats."""
    k = 2 * radius + 1
    for axis in (1, 2):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius + 1, radius)
        c = np.cumsum(np.pad(x, pad, mode="edge"), axis=axis)
        n = c.shape[axis]
        x = (np.take(c, np.arange(k, n), axis=axis) - np.take(c, np.arange(n - k), axis=axis)) / k
    return x


def _sketch(x: np.ndarray) -> np.ndarray:
    """Coloured-pencil lines: strong edges keep their (darkened) colour, everything else is white paper."""
    smooth = _box_blur(_box_blur(x, 1), 1)
    grey = smooth.mean(-1)
    gy, gx = np.gradient(grey, axis=(1, 2))
    edges = np.hypot(gx, gy)
    lines = edges > np.percentile(edges, 90, axis=(1, 2), keepdims=True)
    return np.where(lines[..., None], smooth * 0.7, 250.0)


def apply_shift(images: np.ndarray, shift: str, rng: np.random.Generator) -> np.ndarray:
    """uint8 (n, H, W, 3) images under `shift` (one of SHIFTS)."""
    x = images.astype(np.float32)
    if shift == "Sketch":
        out = _sketch(x)
    elif shift == "Noise":
        out = x + rng.normal(0, 70, x.shape)
    elif shift == "Invert":
        out = 255.0 - x
    elif shift == "Blur":
        out = _box_blur(_box_blur(x, 2), 2)
    elif shift == "Swap":
        out = x[..., [1, 2, 0]]      # R <- G, G <- B, B <- R: red turns blue, blue green, green red
    elif shift == "Tint":
        out = 0.4 * x + 0.6 * AMBER     # a strong warm colour cast: every colour pulled towards amber
    elif shift == "Dim":
        out = 0.3 * x                   # dim light: the same hues at 30% of the brightness
    else:
        raise ValueError(f"unknown domain shift {shift!r}; expected one of {SHIFTS}")
    return np.clip(out, 0, 255).astype(np.uint8)
