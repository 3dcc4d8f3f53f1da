"""Images on disk: decoding with PIL as CoOp does (`.convert("RGB")`) and checking that listed files exist."""
from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
from PIL import Image

from aple_jax import paths
from aple_jax.data.errors import BadImageError, MissingDataError, see_docs


def decode_image(path: str) -> np.ndarray:
    """Reads an image file (local or gs://) as uint8 (H, W, 3) RGB; names the path when absent or unreadable."""
    try:
        with paths.as_path(path).open("rb") as f, Image.open(f) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError as e:
        raise MissingDataError(f"image {path} does not exist. " + see_docs()) from e
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise BadImageError(f"cannot decode image {path}: {e}. Re-download or remove it from the split. "
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
