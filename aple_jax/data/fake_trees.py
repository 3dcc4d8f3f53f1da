"""Tiny CoOp-layout trees with generated JPEGs, for tests, demos and benchmarks (no real data needed)."""
from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from aple_jax.data.coop_folders import LAYOUTS

# Real class counts, so base/new sizes come out as in the protocol.
NUM_CLASSES = {"ImageNet": 1000, "Caltech101": 100, "OxfordPets": 37, "StanfordCars": 196, "OxfordFlowers": 102,
               "Food101": 101, "FGVCAircraft": 100, "SUN397": 397, "DescribableTextures": 47, "EuroSAT": 10,
               "UCF101": 101, "ImageNetV2": 1000, "ImageNetSketch": 1000, "ImageNetA": 200, "ImageNetR": 200}


def jpeg_bytes(height: int = 10, width: int = 12, seed: int = 0) -> bytes:
    """A small random JPEG."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _write(path: str, data: bytes | str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def fake_classname(name: str, label: int) -> str:
    """A cleaned name of the style of the dataset ("class_3" with the dataset's quirks)."""
    if name == "EuroSAT":
        return f"Class {label} Land"
    if name == "SUN397":
        return f"indoor scene_{label}"
    if name == "StanfordCars":
        return f"2012 Make Model_{label} Sedan"
    return f"class_{label}"


def write_json_dataset(root: str, name: str, num_classes: int, per_class: Sequence[int], image: bytes) -> str:
    """`split_zhou_*.json` and its images; every class has `per_class` = (train, val, test) images."""
    layout = LAYOUTS[name]
    image_root = layout.image_root(root)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label in range(num_classes):
        cname = fake_classname(name, label)
        for s, n in zip(split, per_class):
            for k in range(n):
                key = f"c{label:03d}/{s}_{k:03d}.jpg"
                _write(os.path.join(image_root, key), image)
                split[s].append([key, label, cname])
    _write(os.path.join(layout.dataset_path(root), layout.split_file), json.dumps(split, indent=4))
    return layout.dataset_path(root)


def write_classnames(path: str, num_classes: int) -> list[str]:
    """An ImageNet-style `classnames.txt` ("wnid name" lines); returns the wnids."""
    wnids = [f"n{i:08d}" for i in range(num_classes)]
    _write(path, "".join(f"{w} imagenet class {i}\n" for i, w in enumerate(wnids)))
    return wnids


def write_imagenet(root: str, num_classes: int, per_class: Sequence[int], image: bytes) -> str:
    """imagenet/classnames.txt, images/train/<wnid>/ and images/val/<wnid>/."""
    ddir = os.path.join(root, "imagenet")
    wnids = write_classnames(os.path.join(ddir, "classnames.txt"), num_classes)
    for w in wnids:
        for sub, n in (("train", per_class[0]), ("val", per_class[-1])):
            for k in range(n):
                _write(os.path.join(ddir, "images", sub, w, f"{w}_{k}.JPEG"), image)
    return ddir


def write_aircraft(root: str, num_classes: int, per_class: Sequence[int], image: bytes) -> str:
    """fgvc_aircraft/variants.txt, images_variant_{train,val,test}.txt and images/<id>.jpg."""
    ddir = os.path.join(root, "fgvc_aircraft")
    variants = [f"7{i:02d}-{i}" for i in range(num_classes)]
    _write(os.path.join(ddir, "variants.txt"), "".join(v + "\n" for v in variants))
    image_id = 1000000
    for s, n in zip(("train", "val", "test"), per_class):
        lines = []
        for v in variants:
            for _ in range(n):
                image_id += 1
                _write(os.path.join(ddir, "images", f"{image_id}.jpg"), image)
                lines.append(f"{image_id} {v}\n")
        _write(os.path.join(ddir, f"images_variant_{s}.txt"), "".join(lines))
    return ddir


def write_variant(root: str, name: str, num_classes: int, per_class: int, image: bytes,
                  num_listed: int | None = None) -> str:
    """ImageNetV2/-Sketch/-A/-R: classnames.txt (`num_listed` lines) and class folders for `num_classes`."""
    layout = LAYOUTS[name]
    num_listed = num_listed or num_classes
    wnids = write_classnames(os.path.join(layout.dataset_path(root), "classnames.txt"), num_listed)
    chosen = np.linspace(0, num_listed - 1, num_classes).round().astype(int)
    for label in chosen:
        folder = str(label) if name == "ImageNetV2" else wnids[label]
        for k in range(per_class):
            _write(os.path.join(layout.image_root(root), folder, f"img_{k}.jpeg"), image)
    if name in ("ImageNetA", "ImageNetR"):
        _write(os.path.join(layout.image_root(root), "README.txt"), "not a class\n")
    return layout.dataset_path(root)


def write_coop_tree(root: str, name: str, num_classes: int | None = None, per_class: Sequence[int] = (2, 1, 1),
                    image: bytes | None = None) -> str:
    """Writes dataset `name` (a canonical CoOp name) under `root` in CoOp's layout; returns its directory."""
    num_classes = num_classes or NUM_CLASSES[name]
    image = image or jpeg_bytes()
    if name == "ImageNet":
        return write_imagenet(root, num_classes, per_class, image)
    if name == "FGVCAircraft":
        return write_aircraft(root, num_classes, per_class, image)
    if LAYOUTS[name].test_only:
        return write_variant(root, name, num_classes, per_class[-1], image,
                             num_listed=1000 if name in ("ImageNetA", "ImageNetR") else None)
    return write_json_dataset(root, name, num_classes, per_class, image)
