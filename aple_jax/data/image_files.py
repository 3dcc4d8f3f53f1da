"""Images on disk: decoding with PIL as CoOp does (`.convert("RGB")`) and checking that listed files exist."""
from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

import numpy as np
from PIL import Image

from aple_jax import paths
from aple_jax.data.errors import BadImageError, MissingDataError, see_docs


# Modes PIL's own `.convert("RGB")` maps correctly (CoOp's decoding).
PLAIN_MODES = ("RGB", "RGBX", "L", "1", "CMYK", "YCbCr", "HSV")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
SUPPORTED_MODES = PLAIN_MODES + ALPHA_MODES + INTEGER_MODES + ("P", "F")


def to_rgb(img: Image.Image, path: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB of an image in any supported PIL mode: 16-bit and 32-bit integer images scaled from
    [0, 65535], float images from [0, 1], transparent pixels composited over white; other modes are refused."""
    mode = img.mode
    if mode == "P":
        mode = "PA" if "transparency" in img.info else "RGB"
    if mode in PLAIN_MODES:
        return np.asarray(img.convert("RGB"))
    if mode in ALPHA_MODES:
        rgba = np.asarray(img.convert("RGBA"), np.float32)
        alpha = rgba[..., 3:] / 255.0
        return np.round(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    if mode in INTEGER_MODES or mode == "F":
        gray = np.asarray(img).astype(np.float64)
        high = 1.0 if mode == "F" else 65535.0
        if not (np.isfinite(gray).all() and gray.min(initial=0) >= 0 and gray.max(initial=0) <= high):
            raise BadImageError(f"image {path}: PIL mode {img.mode!r} with values in [{gray.min()}, {gray.max()}]; "
                                f"expected [0, {high:g}]. Convert it to 8-bit RGB. " + see_docs())
        return np.repeat(np.round(gray * (255.0 / high)).astype(np.uint8)[..., None], 3, axis=-1)
    raise BadImageError(f"image {path}: PIL mode {img.mode!r} is not supported; expected one of "
                        f"{', '.join(SUPPORTED_MODES)}. Convert it to 8-bit RGB. " + see_docs())


def decode_image(path: str) -> np.ndarray:
    """Reads an image file (local or gs://) as uint8 (H, W, 3) RGB (see `to_rgb`); names the path when it is
    absent or unreadable."""
    try:
        with paths.as_path(path).open("rb") as f:
            return decode_stream(f, path)
    except FileNotFoundError as e:
        raise MissingDataError(f"image {path} does not exist. " + see_docs()) from e


def decode_stream(f: BinaryIO, name: str) -> np.ndarray:
    """Decodes an open image file (or its bytes in a BytesIO) as `decode_image` does; `name` names it in errors."""
    try:
        with Image.open(f) as img:
            return to_rgb(img, name)
    except BadImageError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise BadImageError(f"cannot decode image {name}: {e}. Re-download or remove it from the split. "
                            + see_docs()) from e


class ImageFiles:
    """Loader for images stored under `root`; keys are paths relative to it."""

    def __init__(self, root: str):
        self.root = root

    def __call__(self, key: str) -> np.ndarray:
        return decode_image(os.path.join(self.root, key))

    def __repr__(self) -> str:
        return f"ImageFiles({self.root!r})"


def check_files_exist(root: str, keys: Iterable[str], what: str) -> None:
    """Raises MissingDataError naming the first absent files of `keys` (relative to `root`) and their count."""
    missing = paths.missing_files(root, keys)
    if missing:
        shown = ", ".join(os.path.join(root, k) for k in missing[:3])
        raise MissingDataError(f"{len(missing)} image(s) listed in {what} are absent, e.g. {shown}. "
                               f"Images must lie under {root}. " + see_docs())


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_GLOB_CHARS = "*?["


def find_images(specs: Iterable[str]) -> list[str]:
    """The image files that folders (searched recursively for IMAGE_EXTENSIONS, any case), files and glob
    patterns (`**` crosses folders) name, local or gs://: in the order given, each folder's and pattern's sorted,
    each file once. An empty folder, a pattern matching nothing and a missing file are errors naming them."""
    found: list[str] = []
    for spec in specs:
        if any(c in spec for c in _GLOB_CHARS):
            matches = paths.glob(spec)
            if not matches:
                raise MissingDataError(f"no file matches the pattern {spec!r}")
        elif paths.as_path(spec).is_dir():
            matches = sorted(_images_below(spec))
            if not matches:
                raise MissingDataError(f"folder {spec} holds no images (no file below it ends in "
                                       f"{', '.join(IMAGE_EXTENSIONS)})")
        elif paths.as_path(spec).exists():
            matches = [spec]
        else:
            raise paths.storage_error(spec, "image")
        found += matches
    return list(dict.fromkeys(found))


def _images_below(folder: str) -> Iterable[str]:
    for name, is_dir in paths.list_dir(folder):
        child = f"{folder.rstrip('/')}/{name}"
        if is_dir:
            yield from _images_below(child)
        elif name.lower().endswith(IMAGE_EXTENSIONS):
            yield child


def _header_problem(path: str) -> str | None:
    """Why the image file at `path` cannot be decoded, judged from its size and header only; None if it looks fine."""
    try:
        if os.path.getsize(path) == 0:
            return "the file is empty"
        with Image.open(path) as img:
            if img.mode not in SUPPORTED_MODES:
                return f"PIL mode {img.mode!r} is not supported"
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return str(e)
    return None


def check_decodable(root: str, keys: Iterable[str], what: str) -> None:
    """Refuses, by name, listed images that are empty or whose header PIL cannot read (local roots; a header read
    per file, so a body truncated after a valid header still fails only when it is decoded)."""
    if paths.is_remote(root):
        return
    keys = list(dict.fromkeys(keys))
    with ThreadPoolExecutor(16) as pool:
        problems = [(k, p) for k, p in zip(keys, pool.map(lambda k: _header_problem(os.path.join(root, k)), keys))
                    if p]
    if problems:
        key, problem = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BadImageError(f"{len(problems)} image(s) in {what} cannot be decoded: {os.path.join(root, key)}: "
                            f"{problem}{more}. Re-download them or remove them from the split. " + see_docs())
