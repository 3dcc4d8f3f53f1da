"""Prepared TFDS datasets read through `tfds.data_source` (ArrayRecord, no TensorFlow), with CoOp's class names.

TFDS splits are not CoOp's split files: these sources serve as an image store and for the ImageNet family.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from aple_jax import paths
from aple_jax.data.errors import MissingDataError, UnknownDatasetError, see_docs
from aple_jax.data.records import Datum
from aple_jax.data.split_files import RawSplits, carve_per_class, read_classnames_txt

log = logging.getLogger(__name__)

ClassMap = list[tuple[int, str]]  # (TFDS label, CoOp class name) in CoOp's label order

EUROSAT_NAMES = {
    "AnnualCrop": "Annual Crop Land", "Forest": "Forest", "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road", "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings", "River": "River",
    "SeaLake": "Sea or Lake",
}
CALTECH_DROPPED = ("background_google", "faces_easy")
CALTECH_FOLDERS = {"faces": "Faces", "leopards": "Leopards", "motorbikes": "Motorbikes"}
CALTECH_NAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}


@dataclasses.dataclass(frozen=True)
class ClassInfo:
    """What a class map may need besides the TFDS names: CLIP names by wnid, labels present in the data."""
    wnid_names: dict[str, str] | None = None
    present: Sequence[int] | None = None


def _same(names: list[str], info: ClassInfo) -> ClassMap:
    return list(enumerate(names))


def _lower(names: list[str], info: ClassInfo) -> ClassMap:
    return [(i, n.lower()) for i, n in enumerate(names)]


def _caltech(names: list[str], info: ClassInfo) -> ClassMap:
    """CoOp's 100 classes: drop the background and easy faces, order by the original (case-sensitive) folders."""
    folders = {CALTECH_FOLDERS.get(n, n): i for i, n in enumerate(names) if n not in CALTECH_DROPPED}
    return [(folders[f], CALTECH_NAMES.get(f, f)) for f in sorted(folders)]


def _cars(names: list[str], info: ClassInfo) -> ClassMap:
    """Year moved to the front: "Acura RL Sedan 2012" -> "2012 Acura RL Sedan"."""
    return [(i, " ".join([n.split(" ")[-1]] + n.split(" ")[:-1])) for i, n in enumerate(names)]


def _sun(names: list[str], info: ClassInfo) -> ClassMap:
    """"/b/bakery/shop" -> "shop bakery"."""
    return [(i, " ".join(n.strip("/").split("/")[1:][::-1])) for i, n in enumerate(names)]


def _eurosat(names: list[str], info: ClassInfo) -> ClassMap:
    return [(i, EUROSAT_NAMES[n]) for i, n in enumerate(names)]


def _imagenet(names: list[str], info: ClassInfo) -> ClassMap:
    """WordNet ids -> CLIP names from classnames.txt; only the labels present (ImageNet-A/R: 200) when given."""
    keep = range(len(names)) if info.present is None else sorted(info.present)
    missing = [names[i] for i in keep if names[i] not in info.wnid_names]
    if missing:
        raise MissingDataError(f"classnames.txt has no line for {missing[:5]} ({len(missing)} wnids). "
                               + see_docs("ImageNet"))
    return [(i, info.wnid_names[names[i]]) for i in keep]


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
    """A TFDS builder in this protocol: the TFDS split behind each of ours (None = carved from train)."""
    name: str
    builder: str
    train: str
    val: str | None
    test: str | None
    class_map: Callable[[list[str], ClassInfo], ClassMap]
    test_only: bool = False
    needs_clip_names: bool = False
    subset_present: bool = False


TFDS_SPECS: dict[str, TfdsSpec] = {s.builder.split("/")[0]: s for s in [
    TfdsSpec("Caltech101", "caltech101", "train", None, "test", _caltech),
    TfdsSpec("OxfordPets", "oxford_iiit_pet", "train", None, "test", _lower),
    TfdsSpec("StanfordCars", "cars196", "train", None, "test", _cars),
    TfdsSpec("OxfordFlowers", "oxford_flowers102", "train", "validation", "test", _same),
    TfdsSpec("Food101", "food101", "train", None, "validation", _same),
    TfdsSpec("SUN397", "sun397/tfds", "train", "validation", "test", _sun),
    TfdsSpec("DescribableTextures", "dtd", "train", "validation", "test", _same),
    TfdsSpec("EuroSAT", "eurosat/rgb", "train", None, None, _eurosat),
    TfdsSpec("ImageNet", "imagenet2012", "train", "validation", "validation", _imagenet, needs_clip_names=True),
    TfdsSpec("ImageNetV2", "imagenet_v2", "test", "test", "test", _imagenet, True, True),
    TfdsSpec("ImageNetSketch", "imagenet_sketch", "test", "test", "test", _imagenet, True, True),
    TfdsSpec("ImageNetA", "imagenet_a", "test", "test", "test", _imagenet, True, True, True),
    TfdsSpec("ImageNetR", "imagenet_r", "test", "test", "test", _imagenet, True, True, True),
]}
_BY_CANONICAL = {s.name: s for s in TFDS_SPECS.values()}
UNSUPPORTED = {
    "FGVCAircraft": "TFDS has no FGVC-Aircraft builder (visual_domain_decathlon/aircraft is 72 px)",
    "UCF101": "TFDS only has the UCF101 video builder; CoOp uses extracted middle frames",
}


def tfds_spec(name: str) -> tuple[TfdsSpec, str]:
    """The spec and full builder name for "oxford_iiit_pet", "eurosat/rgb", "imagenet_v2/topimages" or "OxfordPets"."""
    from aple_jax.data.names import canonical_name

    base = name.split("/")[0]
    if base in TFDS_SPECS:
        spec = TFDS_SPECS[base]
        return spec, name if "/" in name else spec.builder
    canonical = canonical_name(name)
    if canonical in UNSUPPORTED:
        raise UnknownDatasetError(f"no TFDS source for {canonical}: {UNSUPPORTED[canonical]}; use the CoOp folder "
                                  f"layout. " + see_docs(canonical))
    if canonical not in _BY_CANONICAL:
        raise UnknownDatasetError(f"no TFDS source for {name!r}; supported builders: {', '.join(TFDS_SPECS)}. "
                                  + see_docs("TFDS"))
    spec = _BY_CANONICAL[canonical]
    return spec, spec.builder


class TfdsImages:
    """Loader: key i is example i of one TFDS split; the data source is reopened after pickling (grain workers)."""

    def __init__(self, builder: str, split: str, data_dir: str | None):
        self.builder, self.split, self.data_dir = builder, split, data_dir
        self._source = open_source(builder, split, data_dir)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_source"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._source = open_source(self.builder, self.split, self.data_dir)

    def __call__(self, key: int) -> np.ndarray:
        image = np.asarray(self._source[key]["image"], np.uint8)
        return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image

    def __repr__(self) -> str:
        return f"TfdsImages({self.builder!r}, {self.split!r})"


def open_source(builder: str, split: str, data_dir: str | None, **kwargs: Any) -> Sequence[Any]:
    """`tfds.data_source` that names the builder, split and data_dir when the dataset is not prepared."""
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(builder, split=split, data_dir=data_dir, download=False, **kwargs)
    except (FileNotFoundError, NotImplementedError, ValueError, tfds.core.registered.DatasetNotFoundError) as e:
        reason = str(e).rstrip(".")
        raise MissingDataError(f"TFDS dataset {builder!r} split {split!r} is not prepared in ArrayRecord format "
                               f"under data_dir={data_dir or '$TFDS_DATA_DIR'}: {reason}. " + see_docs("TFDS")) from e


def scan_labels(builder: str, split: str, data_dir: str | None) -> np.ndarray:
    """Labels of every example, parsing the serialized records without decoding images where possible."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import example_parser

    try:
        raw = open_source(builder, split, data_dir, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
        records = [raw[i] for i in range(min(len(raw), 1))]
    except ImportError:  # a source that yields only decoded examples without TensorFlow (tfds' mock)
        records = []
    if not records or isinstance(records[0], dict):
        decoded = open_source(builder, split, data_dir)
        return np.asarray([int(decoded[i]["label"]) for i in range(len(decoded))], np.int64)
    parser = example_parser.ExampleParserNp(tfds.builder(builder, data_dir=data_dir).info.features
                                            .get_serialized_info())
    return np.asarray([int(parser.parse_example(raw[i])["label"]) for i in range(len(raw))], np.int64)


def cached_labels(builder: str, split: str, data_dir: str | None, cache_dir: str | None) -> np.ndarray:
    """`scan_labels`, cached as JSON in `cache_dir` (a full scan of a large split reads every record once)."""
    path = None if cache_dir is None else os.path.join(cache_dir, f"labels-{builder.replace('/', '-')}-{split}.json")
    if path and paths.as_path(path).is_file():
        return np.asarray(json.loads(paths.as_path(path).read_text()), np.int64)
    log.info("scanning the labels of TFDS %s[%s]", builder, split)
    labels = scan_labels(builder, split, data_dir)
    if path and jax.process_index() == 0:     # the other processes scanned the same labels themselves
        try:
            paths.write_json_atomic(path, labels.tolist(), indent=None)
        except OSError as e:
            log.warning("could not cache TFDS labels at %s: %s", path, e)
    return labels


def _records(labels: np.ndarray, class_map: ClassMap) -> list[Datum]:
    to_coop = {tfds_label: (y, name) for y, (tfds_label, name) in enumerate(class_map)}
    return [Datum(i, *to_coop[int(t)]) for i, t in enumerate(labels) if int(t) in to_coop]


def _class_info(spec: TfdsSpec, builder: str, data_dir: str | None, cache_dir: str | None,
                classnames_file: str | None) -> ClassInfo:
    if not spec.needs_clip_names:
        return ClassInfo()
    path = classnames_file or os.path.join(data_dir or "", "classnames.txt")
    present = set(cached_labels(builder, spec.test, data_dir, cache_dir).tolist()) if spec.subset_present else None
    return ClassInfo(read_classnames_txt(path, "ImageNet"), None if present is None else sorted(present))


def tfds_splits(spec: TfdsSpec, builder: str, data_dir: str | None, cache_dir: str | None,
                classnames_file: str | None = None) -> tuple[RawSplits, dict[str, TfdsImages], list[str]]:
    """Records (keys are example indices), a loader per split and all class names in CoOp's order."""
    import tensorflow_datasets as tfds

    names = tfds.builder(builder, data_dir=data_dir).info.features["label"].names
    class_map = spec.class_map(names, _class_info(spec, builder, data_dir, cache_dir, classnames_file))
    tfds_split = {"train": spec.train, "val": spec.val or spec.train, "test": spec.test or spec.train}
    loaders = {s: TfdsImages(builder, t, data_dir) for s, t in tfds_split.items()}
    if spec.test_only:
        data = _records(cached_labels(builder, spec.test, data_dir, cache_dir), class_map)
        return RawSplits(data, data, data), loaders, [n for _, n in class_map]
    train = _records(cached_labels(builder, spec.train, data_dir, cache_dir), class_map)
    if spec.test is None:  # train only (EuroSAT): CoOp's generated proportions 50/20/30
        train, val, test = carve_per_class(train, (0.5, 0.2, 0.3))
    else:
        test = _records(cached_labels(builder, spec.test, data_dir, cache_dir), class_map)
        if spec.val is None:  # CoOp's split_trainval: 20% of train per class
            train, val = carve_per_class(train, (0.8, 0.2))
        else:
            val = _records(cached_labels(builder, spec.val, data_dir, cache_dir), class_map)
    if spec.val is not None and spec.val == spec.test:  # ImageNet: the test set doubles as val, as in CoOp
        val = None
    return RawSplits(train, val, test), loaders, [n for _, n in class_map]
