"""Canonical dataset names (CoOp's `DATASET.NAME`) and the spellings accepted for them."""
from __future__ import annotations

import re

from aple_jax.data.errors import UnknownDatasetError, see_docs

COOP_DATASETS = ("ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101",
                 "FGVCAircraft", "SUN397", "DescribableTextures", "EuroSAT", "UCF101", "ImageNetV2",
                 "ImageNetSketch", "ImageNetA", "ImageNetR")
OTHER_DATASETS = ("Synthetic", "Custom")

_ALIASES = {
    "flowers102": "OxfordFlowers", "oxfordflowers102": "OxfordFlowers", "flowers": "OxfordFlowers",
    "dtd": "DescribableTextures", "pets": "OxfordPets", "oxfordiiitpet": "OxfordPets", "cars": "StanfordCars",
    "cars196": "StanfordCars", "aircraft": "FGVCAircraft", "imagenet2012": "ImageNet",
    "imagenetadversarial": "ImageNetA", "imagenetrendition": "ImageNetR", "caltech": "Caltech101",
}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_LOOKUP = {_key(n): n for n in COOP_DATASETS + OTHER_DATASETS} | _ALIASES


def canonical_name(name: str) -> str:
    """CoOp's name for `name`, accepting config-file spellings ("oxford_pets", "imagenet_a", "dtd", ...)."""
    try:
        return _LOOKUP[_key(name)]
    except KeyError:
        raise UnknownDatasetError(f"unknown dataset {name!r}; known: {', '.join(COOP_DATASETS + OTHER_DATASETS)}"
                                  f" (or 'tfds:<builder>'). " + see_docs()) from None
