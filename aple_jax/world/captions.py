"""Attributes -> captions: each names a random subset of an image's attributes, so words are learnt one by one."""
from __future__ import annotations

import random

from aple_jax.world.attributes import (BACKGROUNDS, COLOUR_NAMES, COUNTS, PLURALS, POSITIONS, SHAPES, SIZES,
                                       TEXTURES, Attributes)

PREFIXES = (("a photo of ", 0.5), ("an image of ", 0.15), ("a picture of ", 0.1), ("", 0.25))
MENTION = {"size": 0.35, "colour": 0.7, "texture": 0.45, "shape": 0.85, "count": 0.85, "position": 0.25,
           "background": 0.5}
TEXTURE_ONLY = 0.1  # captions of the form "striped texture."


def _article(word: str, rng: random.Random) -> str:
    """'a' or, before a vowel, 'an' or 'a' at random (prompt templates write "a {}" before any class name)."""
    return "an" if word[0] in "aeiou" and rng.random() < 0.5 else "a"


def _mention(name: str, must: str | None, rng: random.Random) -> bool:
    return name == must or rng.random() < MENTION[name]


def noun_phrase(a: dict[str, int], rng: random.Random, must: str | None = None) -> str:
    """E.g. "three small red striped stars", "a circle", "two shapes": the object words of one caption."""
    one = a["count"] == 0
    words = []
    if not one and _mention("count", must, rng):
        words.append(COUNTS[a["count"]])
    if one and _mention("size", must, rng):
        words.append(SIZES[a["size"]])
    if _mention("colour", must, rng):
        words.append(COLOUR_NAMES[a["colour"]])
    if _mention("texture", must, rng):
        words.append(TEXTURES[a["texture"]])
    if _mention("shape", must, rng):
        words.append(SHAPES[a["shape"]] if one else PLURALS[a["shape"]])
    else:
        words.append("shape" if one else "shapes")
    if one:
        first = words[0]
        words.insert(0, "one" if rng.random() < 0.25 else _article(first, rng))
    return " ".join(words)


def caption(a: dict[str, int], rng: random.Random, must: str | None = None) -> str:
    """One caption of one image's attributes, naming `must` (an attribute) for sure."""
    if must in (None, "texture") and rng.random() < TEXTURE_ONLY:
        return f"{TEXTURES[a['texture']]} texture."
    text = noun_phrase(a, rng, must)
    if a["count"] == 0 and _mention("position", must, rng):
        text += " " + POSITIONS[a["position"]]
    if _mention("background", must, rng):
        text += " on " + BACKGROUNDS[a["background"]]
    prefix = rng.choices([p for p, _ in PREFIXES], [w for _, w in PREFIXES])[0]
    return prefix + text + ("." if rng.random() < 0.7 else "")


def captions(attrs: Attributes, rng: random.Random, must: list[str] | None = None) -> list[str]:
    """One caption per image of a batch of attributes (naming `must[i]` in caption i, if given)."""
    n = len(attrs["shape"])
    must = must or [None] * n
    return [caption({k: int(v[i]) for k, v in attrs.items()}, rng, must[i]) for i in range(n)]
