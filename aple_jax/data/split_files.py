"""Reading CoOp's split files: `split_zhou_*.json`, `classnames.txt`, Aircraft's variant lists."""
from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import NamedTuple

from aple_jax import paths
from aple_jax.data.errors import MissingDataError, SplitFormatError, see_docs
from aple_jax.data.records import Datum


class RawSplits(NamedTuple):
    """Full splits as listed on disk; `val` is None where the test set doubles as validation (ImageNet)."""
    train: list[Datum]
    val: list[Datum] | None
    test: list[Datum]


def require_file(path: str, what: str, section: str = "") -> None:
    """Raises MissingDataError naming `path` and what was expected there."""
    if not paths.as_path(path).is_file():
        raise MissingDataError(f"{what} not found at {path}. " + see_docs(section))


def require_dir(path: str, what: str, section: str = "") -> None:
    """Raises MissingDataError naming the directory `path` and what it should hold."""
    if not paths.as_path(path).is_dir():
        raise MissingDataError(f"{what} not found: {path} is not a directory. " + see_docs(section))


def _entries(items: object, path: str, key: str) -> list[Datum]:
    if not isinstance(items, list):
        raise SplitFormatError(f"{path}: '{key}' must be a list of [impath, label, classname]. "
                               + see_docs("split format"))
    out = []
    for i, item in enumerate(items):
        if not (isinstance(item, Sequence) and len(item) == 3):
            raise SplitFormatError(f"{path}: {key}[{i}] = {item!r} is not [impath, label, classname]. "
                                   + see_docs("split format"))
        impath, label, classname = item
        if not isinstance(label, int):
            raise SplitFormatError(f"{path}: {key}[{i}] has label {label!r}; expected an int. "
                                   + see_docs("split format"))
        out.append(Datum(str(impath).lstrip("/"), label, str(classname)))
    return out


def read_split_json(path: str, section: str = "") -> RawSplits:
    """CoOp's `read_split`: `{"train"|"val"|"test": [[impath, label, classname], ...]}`."""
    require_file(path, "split file", section)
    try:
        data = json.loads(paths.as_path(path).read_text())
    except json.JSONDecodeError as e:
        raise SplitFormatError(f"{path} is not valid JSON: {e}. " + see_docs("split format")) from e
    missing = [k for k in ("train", "val", "test") if not isinstance(data, dict) or k not in data]
    if missing:
        raise SplitFormatError(f"{path}: expected keys 'train', 'val', 'test'; missing {missing}. "
                               + see_docs("split format"))
    splits = RawSplits(*(_entries(data[k], path, k) for k in ("train", "val", "test")))
    check_labels(splits, path)
    return splits


def check_labels(splits: RawSplits, path: str) -> None:
    """Refuses a split file whose label and classname columns contradict each other: one label, one class name."""
    name_of: dict[int, tuple[str, str]] = {}
    label_of: dict[str, tuple[int, str]] = {}
    for split, records in zip(("train", "val", "test"), splits):
        for i, rec in enumerate(records or ()):
            where = f"{split}[{i}]"
            if name_of.setdefault(rec.label, (rec.classname, where))[0] != rec.classname:
                first, at = name_of[rec.label]
                raise SplitFormatError(f"{path}: {where} gives label {rec.label} the class name {rec.classname!r}, "
                                       f"but {at} gives it {first!r}; the label and classname columns must agree. "
                                       + see_docs("split format"))
            if label_of.setdefault(rec.classname, (rec.label, where))[0] != rec.label:
                first, at = label_of[rec.classname]
                raise SplitFormatError(f"{path}: {where} gives class {rec.classname!r} the label {rec.label}, but "
                                       f"{at} gives it {first}; the label and classname columns must agree. "
                                       + see_docs("split format"))


def read_classnames_txt(path: str, section: str = "") -> dict[str, str]:
    """ImageNet's `classnames.txt`: lines "wnid class name", in label order."""
    require_file(path, "classnames.txt (lines 'wnid class name')", section)
    names: dict[str, str] = {}
    with paths.as_path(path).open() as f:
        for n, line in enumerate(f, 1):
            parts = line.strip().split(" ")
            if not parts[0]:
                continue
            if len(parts) < 2:
                raise SplitFormatError(f"{path}:{n}: expected 'wnid class name', got {line.strip()!r}. "
                                       + see_docs(section))
            names[parts[0]] = " ".join(parts[1:])
    return names


def read_lines(path: str, what: str, section: str = "") -> list[str]:
    """Non-empty stripped lines of a text file."""
    require_file(path, what, section)
    with paths.as_path(path).open() as f:
        return [line.strip() for line in f if line.strip()]


def read_variant_list(path: str, label_of: dict[str, int], section: str = "") -> list[Datum]:
    """FGVC-Aircraft's `images_variant_*.txt`: "imageid variant name" -> `imageid.jpg`."""
    out = []
    for n, line in enumerate(read_lines(path, "Aircraft variant list", section), 1):
        image_id, _, classname = line.partition(" ")
        if classname not in label_of:
            raise SplitFormatError(f"{path}:{n}: variant {classname!r} is not in variants.txt. "
                                   + see_docs(section))
        out.append(Datum(f"{image_id}.jpg", label_of[classname], classname))
    return out


def list_visible(path: str, *, dirs: bool) -> list[str]:
    """Sorted non-hidden entries of `path` (local or gs://) that are directories (dirs=True) or files."""
    return sorted(name for name, is_dir in paths.list_dir(path) if not name.startswith(".") and is_dir == dirs)


def carve_per_class(records: Sequence[Datum], fractions: Sequence[float], seed: int = 0) -> list[list[Datum]]:
    """A generated split: per class, a seeded shuffle cut by `fractions` (the last part takes the rest)."""
    rng = random.Random(seed)
    parts: list[list[Datum]] = [[] for _ in fractions]
    by_label: dict[int, list[Datum]] = {}
    for rec in records:
        by_label.setdefault(rec.label, []).append(rec)
    for group in by_label.values():
        rng.shuffle(group)
        start = 0
        for p, frac in enumerate(fractions):
            stop = len(group) if p == len(fractions) - 1 else start + round(len(group) * frac)
            parts[p].extend(group[start:stop])
            start = stop
    return parts
