"""CLIP preprocessing on the host with PIL: Dassl's train (random resized crop + flip) and test transforms."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

CLIP_MEAN = np.asarray([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.asarray([0.26862954, 0.26130258, 0.27577711], np.float32)
_SCALE = (1.0 / (255.0 * CLIP_STD)).astype(np.float32)
_SHIFT = (CLIP_MEAN / CLIP_STD).astype(np.float32)

Box = tuple[int, int, int, int]  # top, left, height, width


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 `(x / 255 - mean) / std` with CLIP's mean and std."""
    return image.astype(np.float32) * _SCALE - _SHIFT


CLIP_CROP_SCALE = (0.08, 1.0)  # the reference trainers' RandomResizedCrop area range


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale: tuple[float, float] = CLIP_CROP_SCALE,
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Box:
    """torchvision's `RandomResizedCrop.get_params`: 10 tries of area and log-ratio, then a central fallback."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _crop(img: Image.Image, box: Box) -> Image.Image:
    top, left, h, w = box
    return img.crop((left, top, left + w, top + h))


def train_transform(image: np.ndarray, size: int, rng: np.random.Generator,
                    crop_scale: tuple[float, float] = CLIP_CROP_SCALE) -> np.ndarray:
    """Bicubic RandomResizedCrop(size, crop_scale, ratio 3/4-4/3) -> flip with p=0.5 -> CLIP normalisation."""
    img = Image.fromarray(image)
    box = random_resized_crop_box(img.height, img.width, rng, scale=crop_scale)
    out = np.asarray(_crop(img, box).resize((size, size), Image.BICUBIC))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return normalize(out)


def resize_short_side(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision's `Resize(size)` output (height, width): short side to `size`, long side truncated."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def center_crop_box(height: int, width: int, size: int) -> Box:
    """torchvision's `CenterCrop(size)` box on an image at least `size` on both sides."""
    return round((height - size) / 2.0), round((width - size) / 2.0), size, size


def test_transform(image: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize of the short side to `size` -> center crop -> CLIP normalisation."""
    img = Image.fromarray(image)
    h, w = resize_short_side(img.height, img.width, size)
    img = img.resize((w, h), Image.BICUBIC)
    return normalize(np.asarray(_crop(img, center_crop_box(h, w, size))))
