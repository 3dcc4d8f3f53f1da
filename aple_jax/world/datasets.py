"""The named world datasets (class = fixed attributes, the rest random) and their domain-shifted test renderings.

`build_world_dataset("WorldObjects", shots=16, seed=1, subsample="base")` follows CoOp's protocol exactly as the
other datasets do: k-shot sampling of train (val: min(k, 4)), then the first ceil(n/2) labels are base. A name
with a shift suffix ("WorldObjects-Sketch") renders the same images under that shift.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from aple_jax.data.errors import UnknownDatasetError
from aple_jax.data.fewshot import check_shots, fewshot_splits, relabel, select_classes
from aple_jax.data.records import DatasetSplits, Datum, RecordSource, prompt_names
from aple_jax.world.attributes import (BACKGROUNDS, COLOUR_NAMES, COLOURS, COUNTS, POSITIONS, SHAPES, SIZES,
                                       TEXTURES, sample_attributes)
from aple_jax.world.render import render
from aple_jax.world.shifts import SHIFTS, apply_shift

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
PRETRAIN_STREAM = 0  # random stream of the pretraining images; datasets use 1, 2, ... (never the same images)


@dataclasses.dataclass(frozen=True)
class WorldSpec:
    """A class set: per class a name and the attributes it fixes; `fixed` holds for every class."""
    template: str
    classnames: tuple[str, ...]
    class_attrs: tuple[Mapping[str, int], ...]
    fixed: Mapping[str, int] = dataclasses.field(default_factory=dict)


def interleave(n_a: int, n_b: int) -> list[tuple[int, int]]:
    """All (a, b) pairs (n_a <= n_b) in diagonal order, so any prefix covers the values of both evenly."""
    if n_a > n_b:
        raise ValueError(f"interleave needs n_a <= n_b, got {n_a} > {n_b}")
    return [(a, (a + d) % n_b) for d in range(n_b) for a in range(n_a)]


def _spec(template: str, names_attrs: list[tuple[str, dict[str, int]]], **fixed: int) -> WorldSpec:
    return WorldSpec(template, tuple(n for n, _ in names_attrs), tuple(a for _, a in names_attrs), fixed)


SPECS: dict[str, WorldSpec] = {
    "WorldShapes": _spec("a photo of a {}.", [(s, {"shape": i}) for i, s in enumerate(SHAPES)]),
    "WorldObjects": _spec("a photo of a {}.", [(f"{COLOUR_NAMES[c]} {SHAPES[s]}", {"colour": c, "shape": s})
                                               for c, s in interleave(len(COLOURS), len(SHAPES))]),
    "WorldTextures": _spec("{} texture.", [(t, {"texture": i}) for i, t in enumerate(TEXTURES)], count=0, size=1),
    "WorldScenes": _spec("a photo of a {}.", [(f"{COLOUR_NAMES[c]} shape on {BACKGROUNDS[b]}", {"background": b,
                                                                                                "colour": c})
                                              for b, c in interleave(len(BACKGROUNDS), len(COLOURS))]),
    "WorldCounts": _spec("a photo of {}.", [(f"{COUNTS[n]} {COLOUR_NAMES[c]} {'shape' if n == 0 else 'shapes'}",
                                             {"count": n, "colour": c})
                                            for n, c in interleave(len(COUNTS), len(COLOURS))]),
    # Appended after the first five: a dataset's images are seeded by its index here.
    "WorldPlaces": _spec("a photo of a {}.", [(f"{COLOUR_NAMES[c]} shape {POSITIONS[p]}", {"position": p, "colour": c})
                                              for p, c in interleave(len(POSITIONS), len(COLOURS))], count=0),
    "WorldSizes": _spec("a photo of a {}.", [(f"{SIZES[z]} {COLOUR_NAMES[c]} shape", {"size": z, "colour": c})
                                             for z, c in interleave(len(SIZES), len(COLOURS))], count=0),
}
BASE_DATASETS = tuple(SPECS)
WORLD_DATASETS = BASE_DATASETS + tuple(f"{d}-{s}" for d in BASE_DATASETS for s in SHIFTS)
TEMPLATES = {name: SPECS[name.split("-")[0]].template for name in WORLD_DATASETS}
# The world's 11-dataset suite (sweep shortcut `world11`), chosen by room and zero-shot level before the methods were
# compared on it (docs/world.md): from generic (zero-shot near the probe) to specialist (zero-shot near 0, probe
# high). Its specialist six are the shifts a camera makes (a colour cast, dim light) with room of at least 15 points.
SUITE = ("WorldScenes", "WorldSizes", "WorldCounts", "WorldObjects", "WorldScenes-Blur", "WorldCounts-Dim",
         "WorldCounts-Tint", "WorldSizes-Dim", "WorldSizes-Tint", "WorldScenes-Dim", "WorldScenes-Tint")


def parse_name(name: str) -> tuple[str, str | None]:
    """("WorldObjects", "Sketch") for "WorldObjects-Sketch"; a clear error for unknown names."""
    if name not in WORLD_DATASETS:
        raise UnknownDatasetError(f"unknown world dataset {name!r}; expected one of {', '.join(BASE_DATASETS)}, "
                         f"optionally with a shift suffix -{'/-'.join(SHIFTS)} (e.g. 'WorldObjects-Sketch')")
    base, _, shift = name.partition("-")
    return base, shift or None


class WorldImages:
    """Loader: key k of a split is instance k % per_class of class k // per_class, fixed by the world seed.
    Rendered images are kept (a few MB: world splits are small), so later epochs do not render them again."""

    def __init__(self, name: str, split: str, per_class: int, image_size: int, world_seed: int):
        self.base, self.shift = parse_name(name)
        self.name, self.split, self.per_class = name, split, per_class
        self.image_size, self.world_seed = image_size, world_seed
        self._rendered: dict[int, np.ndarray] = {}

    def __call__(self, key: int) -> np.ndarray:
        key = int(key)
        if key not in self._rendered:
            image = self._render(key)
            image.flags.writeable = False     # shared by every epoch: nobody may change it in place
            self._rendered[key] = image
        return self._rendered[key]

    def _render(self, key: int) -> np.ndarray:
        spec = SPECS[self.base]
        label = int(key) // self.per_class
        rng = np.random.default_rng([self.world_seed, 1 + BASE_DATASETS.index(self.base), SPLIT_IDS[self.split],
                                     int(key)])
        attrs = sample_attributes(rng, 1, {**spec.fixed, **spec.class_attrs[label]})
        image = render(attrs, rng, self.image_size)
        return (apply_shift(image, self.shift, rng) if self.shift else image)[0]

    def __repr__(self) -> str:
        return (f"WorldImages({self.name!r}, {self.split!r}, per_class={self.per_class}, "
                f"size={self.image_size}, world_seed={self.world_seed})")


def _records(classnames: tuple[str, ...], per_class: int) -> list[Datum]:
    return [Datum(y * per_class + i, y, name) for y, name in enumerate(classnames) for i in range(per_class)]


def build_world_dataset(name: str, *, shots: int, seed: int, subsample: str = "all", image_size: int = 64,
                        train_per_class: int = 16, val_per_class: int = 4, test_per_class: int = 20,
                        strict_shots: bool = False, world_seed: int = 0) -> DatasetSplits:
    """A world dataset under CoOp's protocol; `seed` drives few-shot sampling, `world_seed` the images."""
    base, _ = parse_name(name)
    select_classes([], subsample)  # validates `subsample`
    classnames = SPECS[base].classnames
    per_class = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    for split, n in per_class.items():
        if n < 1:
            raise ValueError(f"{split}_per_class must be at least 1, got {n}")
    train, val, test = (_records(classnames, per_class[s]) for s in ("train", "val", "test"))
    if shots >= 1:
        train, val = fewshot_splits(train, val, num_shots=shots, seed=seed)
        check_shots(train, shots, classnames, strict=strict_shots, what=f"{name} train")
    selected = select_classes(range(len(classnames)), subsample)
    splits = {s: relabel(recs, selected) for s, recs in zip(("train", "val", "test"), (train, val, test))}
    sources = {s: RecordSource(recs, WorldImages(name, s, per_class[s], image_size, world_seed))
               for s, recs in splits.items()}
    return DatasetSplits(name, sources["train"], sources["val"], sources["test"],
                         prompt_names([classnames[y] for y in selected]), SPECS[base].template)
