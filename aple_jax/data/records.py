"""The record type (CoOp's Datum), random-access sources over records, and the split container."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from aple_jax.data.errors import EmptySplitError, SplitFormatError, see_docs


class Datum(NamedTuple):
    """One example: `key` is an image path relative to the image root, or an index into a TFDS split or generator."""
    key: str | int
    label: int
    classname: str


ImageLoader = Callable[[Any], np.ndarray]  # key -> uint8 (H, W, 3)


class RecordSource:
    """Random-access source: `source[i] -> {"image": uint8 (H, W, 3), "label": int}`; picklable for grain workers."""

    def __init__(self, records: Sequence[Datum], loader: ImageLoader):
        self.records = list(records)
        self.loader = loader

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        return {"image": self.loader(rec.key), "label": int(rec.label)}

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([r.label for r in self.records], np.int64)

    def __repr__(self) -> str:
        return f"RecordSource({len(self)} records, loader={self.loader!r})"


@dataclasses.dataclass(frozen=True)
class DatasetSplits:
    """A dataset ready for training: sources, prompt-ready class names (ordered by label) and template."""
    name: str
    train: RecordSource
    val: RecordSource
    test: RecordSource
    classnames: list[str]
    template: str

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def check_evaluable(self, split: str) -> None:
        """Refuses a test split, or a class of it, without images (its accuracy would read 100% or nothing)."""
        if not len(self.test):
            raise EmptySplitError(f"{self.name}, {split} split: the test set has no images. " + see_docs())
        counts = np.bincount(self.test.labels, minlength=self.num_classes)
        empty = [self.classnames[y] for y in np.flatnonzero(counts == 0)]
        if empty:
            shown = ", ".join(map(repr, empty[:5])) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
            raise EmptySplitError(f"{self.name}, {split} split: {len(empty)} class(es) have no test images: "
                                  f"{shown}. Add test images or remove the class. " + see_docs())

    def summary(self) -> str:
        """One line with the counts a run trains and evaluates on."""
        return (f"{self.name}: {self.num_classes} classes, train {len(self.train)}, "
                f"val {len(self.val)}, test {len(self.test)} images")


def classnames_by_label(records: Sequence[Datum]) -> list[str]:
    """Class names ordered by label, as CoOp's `get_lab2cname`; labels must be 0..n-1 without gaps."""
    names: dict[int, str] = {}
    for rec in records:
        names.setdefault(rec.label, rec.classname)
    labels = sorted(names)
    if labels != list(range(len(labels))):
        missing = sorted(set(range(labels[-1] + 1)) - set(labels)) if labels else []
        raise SplitFormatError(f"labels must be 0..{len(labels) - 1} without gaps; missing {missing[:10]}. "
                               + see_docs())
    return [names[y] for y in labels]


def prompt_names(classnames: Sequence[str]) -> list[str]:
    """CoOp's prompt-side cleaning: `name.replace("_", " ")`."""
    return [name.replace("_", " ") for name in classnames]
