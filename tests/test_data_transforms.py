"""CLIP preprocessing: torchvision's RandomResizedCrop sampling, short-side resize + center crop, normalisation."""
import math

import numpy as np
import pytest
from PIL import Image

from aple_jax.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    center_crop_box,
    normalize,
    random_resized_crop_box,
    resize_short_side,
    train_transform,
)
from aple_jax.data.transforms import test_transform as eval_transform


@pytest.mark.parametrize("shape", [(375, 500), (500, 375), (32, 32), (7, 9)])
def test_crop_box_respects_scale_and_ratio(shape):
    h, w = shape
    for seed in range(200):
        top, left, ch, cw = random_resized_crop_box(h, w, np.random.default_rng(seed))
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0
        if (ch, cw) != (h, w):  # not the fallback: area and ratio come from the sampled ranges (up to rounding)
            assert ch * cw <= h * w and cw / ch <= 4 / 3 * (1 + 2 / min(ch, cw)) + 1e-6


def test_crop_box_fallback_is_central():
    # a 1-pixel-high strip: no sampled box fits, torchvision falls back to a central crop of ratio 4/3
    assert random_resized_crop_box(1, 100, np.random.default_rng(0)) == (0, 49, 1, 1)
    assert random_resized_crop_box(100, 2, np.random.default_rng(0)) == (48, 0, 3, 2)  # h = round(2 / (3/4))


class _ScriptedRng:
    """Returns fixed draws, to follow the algorithm step by step."""

    def __init__(self, uniforms, integers):
        self.uniforms, self.integers_ = list(uniforms), list(integers)

    def uniform(self, low, high):
        return low + (high - low) * self.uniforms.pop(0)

    def integers(self, low, high):
        return low + self.integers_.pop(0) % (high - low)


def test_crop_box_follows_torchvision_steps():
    # first try: area fraction 0.9 of 100x200, log-ratio midpoint (ratio 1) -> 134x134 does not fit in height 100;
    # second try: area fraction 0.25, ratio 4/3 -> w = round(sqrt(5000 * 4/3)) = 82, h = round(sqrt(5000 * 3/4)) = 61
    rng = _ScriptedRng([(0.9 - 0.08) / 0.92, 0.5, (0.25 - 0.08) / 0.92, 1.0], [7, 30])
    assert random_resized_crop_box(100, 200, rng) == (7, 30, 61, 82)
    assert round(math.sqrt(5000 * 4 / 3)) == 82


def test_test_transform_geometry():
    assert resize_short_side(375, 500, 224) == (224, 298)
    assert resize_short_side(500, 375, 224) == (298, 224)
    assert center_crop_box(224, 298, 224) == (0, 37, 224, 224)
    image = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    out = eval_transform(image, 224)
    resized = np.asarray(Image.fromarray(image).resize((298, 224), Image.BICUBIC))[:, 37:261]
    np.testing.assert_allclose(out, normalize(resized), atol=1e-6)


def test_normalize_matches_clip():
    pixel = np.asarray([[[255, 0, 128]]], np.uint8)
    want = (np.asarray([1.0, 0.0, 128 / 255]) - CLIP_MEAN) / CLIP_STD
    np.testing.assert_allclose(normalize(pixel)[0, 0], want, rtol=1e-6)


def test_train_transform_is_seeded_and_flips():
    image = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    a = train_transform(image, 32, np.random.default_rng(3))
    b = train_transform(image, 32, np.random.default_rng(3))
    assert a.shape == (32, 32, 3) and a.dtype == np.float32 and np.array_equal(a, b)
    # the flip is the last draw: with p=0.5, about half of the seeds flip a left-right-asymmetric image
    flips = 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        random_resized_crop_box(60, 80, rng)
        flips += rng.random() < 0.5
    assert 30 < flips < 70


def test_full_crop_scale_keeps_the_whole_image():
    """crop_scale (1, 1) on a square image: the whole image, resized, flipped or not (the world's :demo)."""
    image = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    whole = eval_transform(image, 64)
    for seed in range(10):
        out = train_transform(image, 64, np.random.default_rng(seed), crop_scale=(1.0, 1.0))
        assert np.array_equal(out, whole) or np.array_equal(out, whole[:, ::-1])


def test_parity_with_torchvision():
    tv = pytest.importorskip("torchvision.transforms")
    torch = pytest.importorskip("torch")
    image = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    pipeline = tv.Compose([tv.Resize(224, interpolation=tv.InterpolationMode.BICUBIC), tv.CenterCrop(224),
                           tv.ToTensor(), tv.Normalize(CLIP_MEAN.tolist(), CLIP_STD.tolist())])
    ref = pipeline(Image.fromarray(image)).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(eval_transform(image, 224), ref, atol=1e-5)

    class TorchDraws:
        def uniform(self, low, high):
            return torch.empty(1).uniform_(low, high).item()

        def integers(self, low, high):
            return torch.randint(low, high, size=(1,)).item()

    for seed in range(50):
        torch.manual_seed(seed)
        want = tv.RandomResizedCrop.get_params(torch.empty(3, 40, 400), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
        torch.manual_seed(seed)
        assert tuple(want) == random_resized_crop_box(40, 400, TorchDraws())
