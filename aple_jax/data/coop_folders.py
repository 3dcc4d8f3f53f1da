"""The 15 datasets in CoOp's `DATA/` layout: where each lives and how its splits are read."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from aple_jax import paths
from aple_jax.data.coop_pickle import read_coop_pickle
from aple_jax.data.errors import SplitFormatError, see_docs
from aple_jax.data.records import Datum
from aple_jax.data.split_files import (
    RawSplits,
    list_visible,
    read_classnames_txt,
    read_lines,
    read_split_json,
    read_variant_list,
    require_dir,
)


@dataclasses.dataclass(frozen=True)
class CoopLayout:
    """One dataset under `DATA/`: its directory, image root (prefix of split paths) and split reader."""
    name: str
    dataset_dir: str
    image_dir: str
    read: Callable[[CoopLayout, str], RawSplits]
    expected: str
    test_only: bool = False
    split_file: str | None = None

    def dataset_path(self, root: str) -> str:
        return os.path.join(root, self.dataset_dir)

    def image_root(self, root: str) -> str:
        return os.path.join(root, self.dataset_dir, self.image_dir)

    def pickle_marker(self) -> str:
        """The tail of absolute paths in CoOp's pickles that precedes the relative image path."""
        return "/" + "/".join(p for p in (self.dataset_dir, self.image_dir) if p) + "/"


def _json_reader(split_file: str) -> Callable[[CoopLayout, str], RawSplits]:
    def read(layout: CoopLayout, root: str) -> RawSplits:
        return read_split_json(os.path.join(layout.dataset_path(root), split_file), layout.name)
    return read


def _scan_class_folders(image_root: str, sub: str, folders: list[str], names: dict[str, str],
                        classnames_file: str) -> list[Datum]:
    """Images of `image_root/sub/<folder>/` labelled by the position of the folder in `folders`."""
    out = []
    for label, folder in enumerate(folders):
        if folder not in names:
            raise SplitFormatError(f"folder {os.path.join(image_root, sub, folder)} has no line in "
                                   f"{classnames_file}. " + see_docs())
        rel = os.path.join(sub, folder)
        out.extend(Datum(os.path.join(rel, f), label, names[folder])
                   for f in list_visible(os.path.join(image_root, rel), dirs=False))
    return out


def _read_imagenet(layout: CoopLayout, root: str) -> RawSplits:
    """ImageNet: CoOp's `preprocessed.pkl` when present (its file order fixes the shots), else a folder scan."""
    preprocessed = os.path.join(layout.dataset_path(root), "preprocessed.pkl")
    if paths.as_path(preprocessed).is_file():
        data = read_coop_pickle(preprocessed, layout.pickle_marker())
        return RawSplits(data["train"], None, data["test"])
    return _scan_imagenet(layout, root)


def _scan_imagenet(layout: CoopLayout, root: str) -> RawSplits:
    """Sorted wnid folders of images/train and images/val (files sorted too); val doubles as the test set."""
    classnames_file = os.path.join(layout.dataset_path(root), "classnames.txt")
    names = read_classnames_txt(classnames_file, layout.name)
    image_root = layout.image_root(root)
    splits = []
    for sub in ("train", "val"):
        require_dir(os.path.join(image_root, sub), f"ImageNet {sub} folders (images/{sub}/nXXXXXXXX/)",
                    layout.name)
        folders = list_visible(os.path.join(image_root, sub), dirs=True)
        splits.append(_scan_class_folders(image_root, sub, folders, names, classnames_file))
    return RawSplits(splits[0], None, splits[1])


def _read_aircraft(layout: CoopLayout, root: str) -> RawSplits:
    """FGVC-Aircraft: `variants.txt` gives the labels, `images_variant_{train,val,test}.txt` the splits."""
    ddir = layout.dataset_path(root)
    variants = read_lines(os.path.join(ddir, "variants.txt"), "variants.txt", layout.name)
    label_of = {c: i for i, c in enumerate(variants)}
    return RawSplits(*(read_variant_list(os.path.join(ddir, f"images_variant_{s}.txt"), label_of, layout.name)
                       for s in ("train", "val", "test")))


def _read_wnid_folders(layout: CoopLayout, root: str) -> RawSplits:
    """ImageNet-Sketch/-A/-R: sorted wnid folders -> labels 0..n-1 (200 for A/R), names from classnames.txt."""
    classnames_file = os.path.join(layout.dataset_path(root), "classnames.txt")
    names = read_classnames_txt(classnames_file, layout.name)
    image_root = layout.image_root(root)
    require_dir(image_root, f"{layout.name} class folders", layout.name)
    data = _scan_class_folders(image_root, "", list_visible(image_root, dirs=True), names, classnames_file)
    return RawSplits(data, data, data)


def _read_imagenetv2(layout: CoopLayout, root: str) -> RawSplits:
    """ImageNetV2: folder `i` holds the images of the i-th line of classnames.txt."""
    classnames_file = os.path.join(layout.dataset_path(root), "classnames.txt")
    names = list(read_classnames_txt(classnames_file, layout.name).values())
    image_root = layout.image_root(root)
    require_dir(image_root, "ImageNetV2 folders 0..999", layout.name)
    data = []
    for label, name in enumerate(names):
        folder = os.path.join(image_root, str(label))
        require_dir(folder, f"ImageNetV2 folder for class {label} ({name})", layout.name)
        data.extend(Datum(os.path.join(str(label), f), label, name) for f in list_visible(folder, dirs=False))
    return RawSplits(data, data, data)


def _json_layout(name: str, dataset_dir: str, image_dir: str, split_name: str) -> CoopLayout:
    split_file = f"split_zhou_{split_name}.json"
    where = os.path.join(dataset_dir, image_dir) if image_dir else dataset_dir
    return CoopLayout(name, dataset_dir, image_dir, _json_reader(split_file),
                      f"{dataset_dir}/{split_file} and the images under {where}/", split_file=split_file)


LAYOUTS: dict[str, CoopLayout] = {lay.name: lay for lay in [
    CoopLayout("ImageNet", "imagenet", "images", _read_imagenet,
               "imagenet/classnames.txt, imagenet/images/train/nXXXXXXXX/ and imagenet/images/val/nXXXXXXXX/"),
    _json_layout("Caltech101", "caltech-101", "101_ObjectCategories", "Caltech101"),
    _json_layout("OxfordPets", "oxford_pets", "images", "OxfordPets"),
    _json_layout("StanfordCars", "stanford_cars", "", "StanfordCars"),
    _json_layout("OxfordFlowers", "oxford_flowers", "jpg", "OxfordFlowers"),
    _json_layout("Food101", "food-101", "images", "Food101"),
    CoopLayout("FGVCAircraft", "fgvc_aircraft", "images", _read_aircraft,
               "fgvc_aircraft/variants.txt, fgvc_aircraft/images_variant_{train,val,test}.txt and "
               "fgvc_aircraft/images/"),
    _json_layout("SUN397", "sun397", "SUN397", "SUN397"),
    _json_layout("DescribableTextures", "dtd", "images", "DescribableTextures"),
    _json_layout("EuroSAT", "eurosat", "2750", "EuroSAT"),
    _json_layout("UCF101", "ucf101", "UCF-101-midframes", "UCF101"),
    CoopLayout("ImageNetV2", "imagenetv2", "imagenetv2-matched-frequency-format-val", _read_imagenetv2,
               "imagenetv2/classnames.txt and imagenetv2/imagenetv2-matched-frequency-format-val/{0..999}/",
               test_only=True),
    CoopLayout("ImageNetSketch", "imagenet-sketch", "images", _read_wnid_folders,
               "imagenet-sketch/classnames.txt and imagenet-sketch/images/nXXXXXXXX/", test_only=True),
    CoopLayout("ImageNetA", "imagenet-adversarial", "imagenet-a", _read_wnid_folders,
               "imagenet-adversarial/classnames.txt and imagenet-adversarial/imagenet-a/nXXXXXXXX/ (200 folders)",
               test_only=True),
    CoopLayout("ImageNetR", "imagenet-rendition", "imagenet-r", _read_wnid_folders,
               "imagenet-rendition/classnames.txt and imagenet-rendition/imagenet-r/nXXXXXXXX/ (200 folders)",
               test_only=True),
]}
