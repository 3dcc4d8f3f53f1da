"""Attributes -> images: 1-4 outlined, textured shapes on a textured background, vectorised over a batch (numpy)."""
from __future__ import annotations

import numpy as np

from aple_jax.world.attributes import BACKGROUNDS, COLOURS, SHAPES, TEXTURES, Attributes

MAX_COUNT = 4
OUTLINE = np.asarray([25.0, 25.0, 25.0], np.float32)
_COLOURS = np.asarray(list(COLOURS.values()), np.float32)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each (1, size, size)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return yy[None], xx[None]


# ------------------------------------------------------------------------------------------------ backgrounds

def _noise(rng: np.random.Generator, n: int, size: int, std: float, channels: int = 1) -> np.ndarray:
    return rng.normal(0.0, std, (n, size, size, channels)).astype(np.float32)


def _background(kind: str, rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """n float (size, size, 3) backgrounds of one kind, each with its own random phase and tint."""
    yy, xx = _grid(size)
    tint = rng.uniform(-12, 12, (n, 1, 1, 3)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
    if kind == "grass":
        blades = rng.normal(0, 18, (n, 1, size, 1)).astype(np.float32)
        img = np.asarray([60, 140, 45], np.float32) + blades * [0.6, 1.0, 0.4] + _noise(rng, n, size, 14)
    elif kind == "sand":
        ripple = 10 * np.sin(yy / 3.0 + 2 * np.sin(xx / 9.0 + phase))[..., None]
        img = np.asarray([215, 190, 135], np.float32) + ripple + _noise(rng, n, size, 9)
    elif kind == "water":
        wave = np.sin(2 * np.pi * yy / 9.0 + 1.5 * np.sin(2 * np.pi * xx / 20.0 + phase))[..., None]
        img = np.asarray([35, 95, 175], np.float32) + 35 * np.maximum(wave, 0) ** 4 + _noise(rng, n, size, 6)
    elif kind == "snow":
        flecks = (rng.random((n, size, size, 1)) < 0.04) * -45.0
        img = np.asarray([238, 242, 248], np.float32) + flecks + _noise(rng, n, size, 5)
    elif kind == "bricks":
        off = rng.integers(0, 16, (n, 1, 1)).astype(np.float32)
        row = np.floor((yy + off) / 8.0)
        col_x = xx + off + 8.0 * (row % 2)
        mortar = ((yy + off) % 8.0 < 1.5) | (col_x % 16.0 < 1.5)
        img = np.where(mortar[..., None], np.asarray([195, 190, 180], np.float32),
                       np.asarray([160, 60, 40], np.float32)) + _noise(rng, n, size, 8)
    elif kind == "wood":
        grain = np.sin(2 * np.pi * (xx + 3 * np.sin(yy / 7.0 + phase)) / 6.0)[..., None]
        img = np.asarray([150, 100, 55], np.float32) + 22 * grain + _noise(rng, n, size, 5)
    else:
        raise ValueError(f"unknown background {kind!r}; expected one of {BACKGROUNDS}")
    return img + tint


# ------------------------------------------------------------------------------------------------------ shapes

def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Pixels inside `shape` for coordinates scaled so that the shape spans about [-1, 1]."""
    ax, ay, rr = np.abs(dx), np.abs(dy), dx ** 2 + dy ** 2
    if shape == "circle":
        return rr <= 1.0
    if shape == "square":
        return np.maximum(ax, ay) <= 0.82
    if shape == "triangle":
        return (dy <= 0.8) & (ax <= (dy + 1.0) * 0.58)
    if shape == "star":
        theta = np.arctan2(dx, -dy)
        spike = np.abs(((theta * 5 / (2 * np.pi)) % 1.0) - 0.5) * 2  # 1 at a point, 0 between points
        return np.sqrt(rr) <= 0.42 + 0.6 * spike ** 2
    if shape == "heart":
        x, y = dx * 1.15, -dy * 1.15 + 0.15
        return (x ** 2 + y ** 2 - 1) ** 3 - x ** 2 * y ** 3 <= 0
    if shape == "cross":
        return ((ax <= 0.32) & (ay <= 1.0)) | ((ay <= 0.32) & (ax <= 1.0))
    if shape == "ring":
        return (rr <= 1.0) & (rr >= 0.36)
    if shape == "hexagon":
        return np.maximum(ax * 0.866 + ay * 0.5, ay) <= 0.9
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _texture(texture: str, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Where the pattern takes the dark shade, in pixel offsets from the object centre."""
    if texture == "solid":
        return np.zeros(px.shape, bool)
    if texture == "striped":
        return np.floor((px + py) / 3.0) % 2 == 1
    if texture == "dotted":
        return ((px % 6.0) - 3.0) ** 2 + ((py % 6.0) - 3.0) ** 2 <= 2.6
    if texture == "checkered":
        return (np.floor(px / 4.0) + np.floor(py / 4.0)) % 2 == 1
    if texture == "wavy":
        return np.floor((py + 1.8 * np.sin(px / 1.6)) / 3.0) % 2 == 1
    raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")


def _by_value(index: np.ndarray, names: tuple[str, ...], fn, *arrays: np.ndarray) -> np.ndarray:
    """`fn(names[v], *rows)` evaluated once per distinct value v of `index` over the rows that have it."""
    out = np.zeros(arrays[0].shape, bool)
    for v in np.unique(index):
        rows = index == v
        out[rows] = fn(names[v], *(a[rows] for a in arrays))
    return out


# ------------------------------------------------------------------------------------------------------ layout

def layout(attrs: Attributes, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres (cy, cx) and radii, each (n, MAX_COUNT): one object placed by size and position, else 2x2 cells."""
    n = len(attrs["shape"])
    single = attrs["count"] == 0
    radius = np.where(attrs["size"] == 1, rng.uniform(0.25, 0.31, n), rng.uniform(0.13, 0.17, n)) * size
    radius = np.where(single, radius, rng.uniform(0.11, 0.14, n) * size)
    lo, hi = radius + 1, size - radius - 1
    mid = lambda: rng.uniform(0.42, 0.58, n) * size  # noqa: E731
    near = lambda: lo + rng.uniform(0, 0.12, n) * size  # noqa: E731
    far = lambda: hi - rng.uniform(0, 0.12, n) * size  # noqa: E731
    # positions: center, left, right, top, bottom -> (cy, cx) choices
    cy_opts = np.stack([mid(), mid(), mid(), near(), far()], 1)
    cx_opts = np.stack([mid(), near(), far(), mid(), mid()], 1)
    pos = attrs["position"][:, None]
    cy1, cx1 = np.take_along_axis(cy_opts, pos, 1)[:, 0], np.take_along_axis(cx_opts, pos, 1)[:, 0]
    cells = np.argsort(rng.random((n, MAX_COUNT)), axis=1)  # a random order of the 4 cells of a 2x2 grid
    half = size / 2
    slack = np.maximum(half / 2 - radius[:, None] - 1, 0)
    cy = (cells // 2) * half + half / 2 + rng.uniform(-1, 1, (n, MAX_COUNT)) * slack
    cx = (cells % 2) * half + half / 2 + rng.uniform(-1, 1, (n, MAX_COUNT)) * slack
    cy[single, 0], cx[single, 0] = cy1[single], cx1[single]
    return cy.astype(np.float32), cx.astype(np.float32), np.repeat(radius[:, None], MAX_COUNT, 1).astype(np.float32)


def render(attrs: Attributes, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """uint8 images (n, size, size, 3) of the given attributes; all randomness beyond them comes from `rng`."""
    n = len(attrs["shape"])
    image = np.empty((n, size, size, 3), np.float32)
    for v in np.unique(attrs["background"]):
        rows = attrs["background"] == v
        image[rows] = _background(BACKGROUNDS[v], rng, int(rows.sum()), size)
    cy, cx, radius = layout(attrs, rng, size)
    yy, xx = _grid(size)
    fill = _COLOURS[attrs["colour"]] + rng.uniform(-15, 15, (n, 3)).astype(np.float32)
    shade = fill * 0.4
    for k in range(MAX_COUNT):
        rows = np.flatnonzero(attrs["count"] >= k)
        if rows.size == 0:
            break
        px, py = xx - cx[rows, k, None, None], yy - cy[rows, k, None, None]
        r = radius[rows, k, None, None]
        shapes = attrs["shape"][rows]
        inside = _by_value(shapes, SHAPES, _shape_mask, px / r, py / r)
        edge = _by_value(shapes, SHAPES, _shape_mask, px / (r + 1.3), py / (r + 1.3)) & ~inside
        dark = _by_value(attrs["texture"][rows], TEXTURES, _texture, px, py)
        colour = np.where(dark[..., None], shade[rows, None, None], fill[rows, None, None])
        sub = image[rows]
        sub = np.where(edge[..., None], OUTLINE, sub)
        image[rows] = np.where(inside[..., None], colour, sub)
    return np.clip(image + rng.normal(0, 4, image.shape).astype(np.float32), 0, 255).astype(np.uint8)
