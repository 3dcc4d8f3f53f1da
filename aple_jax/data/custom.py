"""User data: a split JSON in CoOp's format, `train/`+`test/` folders of class folders, or one folder of them."""
from __future__ import annotations

import os

from aple_jax import paths
from aple_jax.data.errors import MissingDataError, SplitFormatError, see_docs
from aple_jax.data.fewshot import FEWSHOT_DIR
from aple_jax.data.records import Datum
from aple_jax.data.split_files import RawSplits, carve_per_class, list_visible, read_split_json, require_dir

SECTION = "Custom"


def _scan(root: str, sub: str, classes: list[str]) -> list[Datum]:
    """Files of `root/sub/<class>/`, labelled by the position of the class in `classes`."""
    out = []
    for label, name in enumerate(classes):
        rel = os.path.join(sub, name)
        if paths.as_path(os.path.join(root, rel)).is_dir():
            out.extend(Datum(os.path.join(rel, f), label, name) for f in list_visible(os.path.join(root, rel),
                                                                                   dirs=False))
    return out


def _generated_split(items: list[Datum]) -> RawSplits:
    """CoOp's generated proportions, 50/20/30 per class, with a fixed seed; needs 4 images per class."""
    counts: dict[str, int] = {}
    for it in items:
        counts[it.classname] = counts.get(it.classname, 0) + 1
    few = sorted(name for name, n in counts.items() if n < 4)
    if few:
        raise SplitFormatError(f"classes {few[:5]} have fewer than 4 images; a generated train/val/test split "
                               f"needs at least 4 per class. " + see_docs(SECTION))
    return RawSplits(*carve_per_class(items, (0.5, 0.2, 0.3)))


def read_custom(root: str, split_file: str | None = None) -> RawSplits:
    """Splits of a custom dataset whose images lie under `root` (see docs/data.md, "Custom")."""
    if split_file is not None:
        return read_split_json(split_file, SECTION)
    require_dir(root, "custom dataset directory (class folders, or train/ and test/ of class folders)", SECTION)
    if paths.as_path(os.path.join(root, "train")).is_dir():
        classes = list_visible(os.path.join(root, "train"), dirs=True)
        if not paths.as_path(os.path.join(root, "test")).is_dir():
            raise MissingDataError(f"{root} has train/ but no test/ folder of class folders. " + see_docs(SECTION))
        extra = sorted(set(list_visible(os.path.join(root, "test"), dirs=True)) - set(classes))
        if extra:
            raise SplitFormatError(f"{os.path.join(root, 'test')} has classes absent from train/: {extra[:5]}. "
                                   + see_docs(SECTION))
        train, test = _scan(root, "train", classes), _scan(root, "test", classes)
        val = _scan(root, "val", classes) if paths.as_path(os.path.join(root, "val")).is_dir() else test
        return RawSplits(train, val, test)
    classes = [c for c in list_visible(root, dirs=True) if c != FEWSHOT_DIR]
    if not classes:
        raise MissingDataError(f"{root} holds no class folders. " + see_docs(SECTION))
    return _generated_split(_scan(root, "", classes))
