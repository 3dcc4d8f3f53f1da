"""What splits read from files must hold before anything is sampled or trained: labels that name a class with
training images, no entry listed twice, and no training image in an evaluation split.

Images are compared by path (relative to the image root, normalised: `./a/../b.jpg` is `b.jpg`), not by content:
hashing every image would read the whole dataset, so the same picture saved under two names is not detected.
"""
from __future__ import annotations

import posixpath
import warnings
from collections.abc import Sequence

from aple_jax.data.errors import SplitFormatError, SplitLeakError, see_docs
from aple_jax.data.records import Datum
from aple_jax.data.split_files import RawSplits

SPLITS = ("train", "val", "test")


class DuplicateEntryWarning(UserWarning):
    """A split lists one image twice with the same label; the repeats are dropped."""


def image_id(key: str | int) -> str | int:
    """The identity of an image path (separators and `.`/`..` normalised); other keys are their own identity."""
    return posixpath.normpath(key.replace("\\", "/")).lstrip("/") if isinstance(key, str) else key


def check_splits(raw: RawSplits, source: str, *, test_only: bool = False) -> RawSplits:
    """The splits with repeated entries dropped (with a warning); refuses contradicting repeats, label errors and,
    unless the dataset is evaluation-only (one list serves as every split), training images in val or test."""
    unique: dict[int, list[Datum]] = {}   # one pass per list: val may be the test list itself
    parts = [None if recs is None else unique.setdefault(id(recs), _without_repeats(recs, split, source))
             for split, recs in zip(SPLITS, raw)]
    checked = RawSplits(*parts)
    check_split_labels(checked, source)
    if not test_only:
        _check_disjoint(checked, source)
    return checked


def _without_repeats(records: Sequence[Datum], split: str, source: str) -> list[Datum]:
    first: dict[str | int, Datum] = {}
    out = []
    for rec in records:
        seen = first.setdefault(image_id(rec.key), rec)
        if seen is rec:
            out.append(rec)
        elif (seen.label, seen.classname) != (rec.label, rec.classname):
            raise SplitFormatError(f"{source}: {split} lists {rec.key} twice, as class {seen.classname!r} (label "
                                   f"{seen.label}) and as class {rec.classname!r} (label {rec.label}); an image has "
                                   "one class. " + see_docs("split format"))
    if len(out) < len(records):
        repeated = next(r.key for r in records if first[image_id(r.key)] is not r)
        warnings.warn(f"{source}: {split} lists {len(records) - len(out)} image(s) more than once (e.g. {repeated}); "
                      "each is kept once", DuplicateEntryWarning, stacklevel=3)
    return out


def check_split_labels(raw: RawSplits, source: str) -> None:
    """Refuses negative labels, labels with no training images and gaps in 0..n-1, naming the class and file."""
    train_labels = {rec.label for rec in raw.train}
    for split, records in zip(SPLITS, raw):
        for rec in records or ():
            if rec.label < 0:
                raise SplitFormatError(f"{source}: {split} entry {rec.key} (class {rec.classname!r}) has label "
                                       f"{rec.label}; labels are 0, 1, ..., one per class. " + see_docs("split format"))
            if rec.label not in train_labels:
                raise SplitFormatError(f"{source}: class {rec.classname!r} (label {rec.label}) has no training "
                                       f"images, but {split} lists {rec.key}; add training images of it or remove "
                                       "the class. " + see_docs("split format"))
    gaps = sorted(set(range(max(train_labels, default=-1) + 1)) - train_labels)
    if gaps:
        above = min((r for r in raw.train if r.label > gaps[0]), key=lambda r: r.label)
        raise SplitFormatError(f"{source}: labels must be 0..{len(train_labels) - 1} without gaps (one per class), "
                               f"but no image has label {', '.join(map(str, gaps[:10]))}; the next class is "
                               f"{above.classname!r} (label {above.label}, e.g. train entry {above.key}). "
                               + see_docs("split format"))


def _check_disjoint(raw: RawSplits, source: str) -> None:
    """Refuses an image listed in the training split and in an evaluation split (its accuracy would be inflated)."""
    train = {image_id(rec.key) for rec in raw.train if isinstance(rec.key, str)}
    for split, records in zip(SPLITS[1:], raw[1:]):
        both = [rec.key for rec in records or () if isinstance(rec.key, str) and image_id(rec.key) in train]
        if both:
            more = f" (and {len(both) - 1} more)" if len(both) > 1 else ""
            raise SplitLeakError(f"{source}: {both[0]} is in both the train and the {split} split{more}; an "
                                 f"evaluation split must hold no training image, or its accuracy counts images the "
                                 f"prompts were trained on. Remove them from one of the splits. "
                                 + see_docs("split format"))
