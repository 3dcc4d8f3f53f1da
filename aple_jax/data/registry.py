"""`build_dataset`: one entry point for CoOp folders, TFDS, custom folders and the synthetic dataset."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from aple_jax import paths
from aple_jax.data.array_records import ArrayRecordImages, has_array_records
from aple_jax.data.coop_folders import LAYOUTS, CoopLayout
from aple_jax.data.coop_pickle import read_coop_pickle
from aple_jax.data.custom import SECTION as CUSTOM_SECTION
from aple_jax.data.custom import read_custom
from aple_jax.data.errors import MissingDataError, see_docs
from aple_jax.data.fewshot import (FEWSHOT_DIR, check_shots, fewshot_cache_path, fewshot_splits, relabel,
                                   select_classes, split_fingerprint)
from aple_jax.data.image_files import ImageFiles, check_decodable, check_files_exist
from aple_jax.data.names import canonical_name
from aple_jax.data.records import DatasetSplits, ImageLoader, RecordSource, classnames_by_label, prompt_names
from aple_jax.data.split_checks import check_splits
from aple_jax.data.split_files import RawSplits, require_dir
from aple_jax.data.synthetic import synthetic_classnames, synthetic_loaders, synthetic_splits
from aple_jax.data.templates import DEFAULT_TEMPLATE, template_for
from aple_jax.data.tfds_source import tfds_spec, tfds_splits

SYNTHETIC_OPTIONS = ("num_classes", "train_per_class", "val_per_class", "test_per_class", "image_size")


@dataclasses.dataclass(frozen=True)
class _Protocol:
    """The run's few-shot and class-split settings."""
    shots: int
    seed: int
    subsample: str
    strict_shots: bool


def _assemble(name: str, raw: RawSplits, loaders: dict[str, ImageLoader], classnames: list[str], template: str,
              proto: _Protocol, *, test_only: bool = False, cache_path: str | None = None,
              importer: Callable | None = None, image_root: str | None = None) -> DatasetSplits:
    """Few-shot sampling (all classes), then the base/new selection, file checks and sources."""
    train, val, test = raw
    if proto.shots >= 1 and not test_only:
        train, val = fewshot_splits(train, val, num_shots=proto.shots, seed=proto.seed, cache_path=cache_path,
                                    importer=importer)
        check_shots(train, proto.shots, classnames, strict=proto.strict_shots, what=f"{name} train")
    val = test if val is None else val
    selected = select_classes(range(len(classnames)), proto.subsample)
    train, val, test = (relabel(s, selected) for s in (train, val, test))
    if image_root is not None:
        check_files_exist(image_root, (r.key for s in (train, val, test) for r in s), f"the {name} splits")
        # what is evaluated, and a few-shot training set, decodes: a bad file fails now, not after training
        check_decodable(image_root, (r.key for r in test), f"the {name} test split")
        if proto.shots >= 1 and not test_only:
            check_decodable(image_root, (r.key for r in train), f"the {name} {proto.shots}-shot training set")
    sources = {s: RecordSource(recs, loaders[s]) for s, recs in zip(("train", "val", "test"), (train, val, test))}
    return DatasetSplits(name, sources["train"], sources["val"], sources["test"],
                         prompt_names([classnames[y] for y in selected]), template)


def _build_coop(layout: CoopLayout, root: str | None, proto: _Protocol, cache_dir: str | None) -> DatasetSplits:
    if root is None:
        raise MissingDataError(f"{layout.name} needs root= the DATA/ directory holding {layout.expected}. "
                               + see_docs(layout.name))
    require_dir(layout.dataset_path(root), f"{layout.name} dataset directory (expected {layout.expected})",
                layout.name)
    raw = check_splits(layout.read(layout, root), f"{layout.name} ({layout.dataset_path(root)})",
                       test_only=layout.test_only)
    fewshot_dir = os.path.join(cache_dir or layout.dataset_path(root), layout.name if cache_dir else FEWSHOT_DIR)
    coop_pkl = os.path.join(layout.dataset_path(root), FEWSHOT_DIR, f"shot_{proto.shots}-seed_{proto.seed}.pkl")

    def import_coop_pickle():
        data = read_coop_pickle(coop_pkl, layout.pickle_marker())
        return data["train"], data.get("val")

    image_root = layout.image_root(root)
    loader = ImageFiles(image_root)
    if has_array_records(layout.dataset_path(root)):   # a copy made by aple_jax.data.to_array_record
        loader, image_root = ArrayRecordImages(layout.dataset_path(root)), None
        loader.check_keys((r.key for s in raw if s for r in s), f"the {layout.name} splits")
    return _assemble(layout.name, raw, dict.fromkeys(("train", "val", "test"), loader),
                     classnames_by_label(raw.train), template_for(layout.name), proto, test_only=layout.test_only,
                     cache_path=fewshot_cache_path(fewshot_dir, proto.shots, proto.seed),
                     importer=import_coop_pickle if paths.as_path(coop_pkl).is_file() else None, image_root=image_root)


def _build_custom(root: str | None, proto: _Protocol, cache_dir: str | None, split_file: str | None = None,
                  image_root: str | None = None, template: str = DEFAULT_TEMPLATE) -> DatasetSplits:
    if split_file is None and root is not None and root.endswith(".json"):   # `data=/path/split.json` in a config
        split_file, root = root, None
    image_root = image_root or root or (os.path.dirname(split_file) if split_file else None)
    if image_root is None:
        raise MissingDataError("the custom dataset needs root= a folder of class folders, or split_file= a "
                               "CoOp-format split JSON. " + see_docs(CUSTOM_SECTION))
    raw = check_splits(read_custom(image_root, split_file), split_file or image_root)
    fewshot_dir = os.path.join(cache_dir, "Custom") if cache_dir else os.path.join(image_root, FEWSHOT_DIR)
    loader = ImageFiles(image_root)
    # Several split files may share one image folder: each keeps its own few-shot cache.
    tag = split_fingerprint(raw.train, raw.val)[:12] if split_file else ""
    return _assemble("Custom", raw, dict.fromkeys(("train", "val", "test"), loader), classnames_by_label(raw.train),
                     template, proto, cache_path=fewshot_cache_path(fewshot_dir, proto.shots, proto.seed, tag),
                     image_root=image_root)


def _build_synthetic(proto: _Protocol, num_classes: int = 10, train_per_class: int = 16, val_per_class: int = 4,
                     test_per_class: int = 8, image_size: int = 32) -> DatasetSplits:
    raw = synthetic_splits(num_classes, train_per_class, val_per_class, test_per_class)
    loaders = synthetic_loaders(train_per_class, val_per_class, test_per_class, image_size)
    return _assemble("Synthetic", raw, loaders, synthetic_classnames(num_classes), template_for("Synthetic"), proto)


def _build_tfds(builder_name: str, data_dir: str | None, proto: _Protocol, cache_dir: str | None,
                classnames_file: str | None = None) -> DatasetSplits:
    spec, builder = tfds_spec(builder_name)
    default_dir = os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))
    label_cache = os.path.join(cache_dir or data_dir or default_dir, "aple_labels")
    raw, loaders, classnames = tfds_splits(spec, builder, data_dir, label_cache, classnames_file)
    return _assemble(spec.name, raw, loaders, classnames, template_for(spec.name), proto,
                     test_only=spec.test_only)


def build_dataset(name: str, root: str | None = None, *, shots: int, seed: int, subsample: str = "all",
                  strict_shots: bool = False, cache_dir: str | None = None, **options: Any) -> DatasetSplits:
    """Builds a dataset under CoOp's protocol; see docs/data.md for names, layouts and `options`.

    name: a CoOp dataset ("OxfordPets", "oxford_pets", ...), "tfds:<builder>" (root = TFDS data_dir; option
    `classnames_file` for the ImageNet family), "custom" (options `split_file`, `image_root`, `template`) or
    "synthetic" (options num_classes, train_per_class, val_per_class, test_per_class, image_size; the other
    sources ignore these, so one config can carry them for every dataset), or "world:<name>" (the procedural
    world of docs/world.md, at its own sizes: the synthetic options do not apply).
    """
    if name.startswith("world:"):   # the built-in procedural world (docs/world.md); imported here to avoid a cycle
        from aple_jax.world import build_world_dataset
        return build_world_dataset(name[len("world:"):], shots=shots, seed=seed, subsample=subsample,
                                   strict_shots=strict_shots)
    proto = _Protocol(shots, seed, subsample, strict_shots)
    select_classes([], subsample)  # validates `subsample` before any file is read
    canonical = None if name.startswith("tfds:") else canonical_name(name)
    if canonical == "Synthetic":
        return _build_synthetic(proto, **options)
    options = {k: v for k, v in options.items() if k not in SYNTHETIC_OPTIONS}
    if canonical is None:
        return _build_tfds(name[len("tfds:"):], root, proto, cache_dir, **options)
    if canonical == "Custom":
        return _build_custom(root, proto, cache_dir, **options)
    if options:
        raise TypeError(f"unexpected options for {canonical}: {sorted(options)}")
    return _build_coop(LAYOUTS[canonical], root, proto, cache_dir)
