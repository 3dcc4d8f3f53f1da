"""`python -m aple_jax.data.to_array_record --dataset NAME --data ROOT --out OUT`: a copy of a CoOp dataset folder
whose images are packed into ArrayRecord files; `data=OUT` then reads them from there (docs/data.md)."""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from aple_jax import paths
from aple_jax.data.array_records import FORMAT, INDEX_FILE, SECTION, has_array_records
from aple_jax.data.coop_folders import LAYOUTS, CoopLayout
from aple_jax.data.errors import MissingDataError, UnknownDatasetError, see_docs
from aple_jax.data.names import canonical_name
from aple_jax.data.split_files import RawSplits, require_dir
from aple_jax.errors import ConfigError, error_boundary

# Layouts whose splits come from a scan of the image folders: a copy without those folders could not list them.
SCANNED = ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")


def _layout(name: str, root: str) -> CoopLayout:
    """The layout of `name`, once its folder under `root` is found and its splits come from files."""
    canonical = canonical_name(name)
    if canonical not in LAYOUTS:
        raise UnknownDatasetError(f"--dataset {name!r} is not a CoOp-layout dataset; expected one of "
                                  f"{', '.join(LAYOUTS)}. " + see_docs(SECTION))
    layout = LAYOUTS[canonical]
    require_dir(layout.dataset_path(root), f"{layout.name} dataset directory (expected {layout.expected})",
                layout.name)
    preprocessed = os.path.join(layout.dataset_path(root), "preprocessed.pkl")
    if canonical in SCANNED or (canonical == "ImageNet" and not paths.as_path(preprocessed).is_file()):
        raise UnknownDatasetError(f"{canonical}: its splits are listed by scanning the image folders, which the "
                                  f"copy does not have; only datasets with split files (and ImageNet with "
                                  f"CoOp's preprocessed.pkl) can be converted. " + see_docs(SECTION))
    return layout


def _copy_tree(src: str, dst: str, skip: set[str]) -> int:
    """Copies every file under `src` to `dst` except the top-level entries named in `skip`; returns the count."""
    count = 0
    for name, is_dir in sorted(paths.list_dir(src)):
        if name in skip:
            continue
        if is_dir:
            count += _copy_tree(os.path.join(src, name), os.path.join(dst, name), set())
        else:
            paths.write_bytes_atomic(os.path.join(dst, name), paths.as_path(os.path.join(src, name)).read_bytes())
            count += 1
    return count


def _read_all(image_root: str, keys: Sequence[str], workers: int) -> Iterator[bytes]:
    """The bytes of every image, in order; `workers` objects are fetched at a time (bucket reads are slow) and at
    most a few chunks of images are held in memory."""
    chunk = 8 * workers
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(keys), chunk):
            yield from pool.map(lambda k: paths.as_path(os.path.join(image_root, k)).read_bytes(),
                                keys[start:start + chunk])


def _move(local: str, target: str) -> None:
    if paths.is_remote(target):
        paths.as_path(local).copy(paths.as_path(target), overwrite=True)
        os.remove(local)
    else:
        os.replace(local, target)


def _write_shards(images: Iterator[bytes], out_dir: str, shard_bytes: int) -> list[str]:
    """Writes the images in order into ArrayRecord shards of about `shard_bytes` each; returns their names."""
    from array_record.python.array_record_module import ArrayRecordWriter
    paths.make_dirs(out_dir)
    tmp_dir = tempfile.mkdtemp(prefix=".array_record.", dir=None if paths.is_remote(out_dir) else out_dir)
    written: list[str] = []
    try:
        writer, size = None, 0
        for data in images:
            if writer is None:
                written.append(os.path.join(tmp_dir, f"{len(written):05d}"))
                writer, size = ArrayRecordWriter(written[-1], "group_size:1"), 0
            writer.write(data)
            size += len(data)
            if size >= shard_bytes:
                writer.close()
                writer = None
        if writer is not None:
            writer.close()
        names = [f"images-{i:05d}-of-{len(written):05d}.array_record" for i in range(len(written))]
        for local, name in zip(written, names):
            _move(local, os.path.join(out_dir, name))
        return names
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def convert(name: str, data: str, out: str, shard_mb: int = 1024, workers: int = 16) -> str:
    """Converts dataset `name` under `data` (CoOp's DATA/ folder) into `out`; returns the new dataset folder."""
    if os.path.normpath(os.fspath(data)) == os.path.normpath(os.fspath(out)):
        raise ConfigError(f"--out {out} is the --data folder; the copy must go elsewhere")
    layout = _layout(name, data)
    src = layout.dataset_path(data)
    if has_array_records(src):
        raise ConfigError(f"--data {data}: {src} is already a converted copy",
                          hint="point --data at the DATA/ folder that holds the image files")
    raw: RawSplits = layout.read(layout, data)
    keys = sorted({r.key for split in raw if split for r in split})
    dst = layout.dataset_path(out)
    # Everything but the images: split files, class names, few-shot caches and CoOp's pickles, as they are.
    skip = {os.path.join(layout.image_dir, k).split("/", 1)[0] for k in keys}
    _copy_tree(src, dst, skip)
    shards = _write_shards(_read_all(layout.image_root(data), keys, workers), dst, shard_mb << 20)
    paths.write_json_atomic(os.path.join(dst, INDEX_FILE), {"format": FORMAT, "dataset": layout.name,
                                                            "shards": shards, "keys": keys}, indent=None)
    if layout.read(layout, out) != raw:
        raise MissingDataError(f"the copy {dst} lists other splits than {src}. " + see_docs(SECTION))
    return dst


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0].strip("`"))
    parser.add_argument("--dataset", required=True, help="a CoOp dataset name, e.g. OxfordPets")
    parser.add_argument("--data", required=True, type=paths.user_path, help="the DATA/ folder holding the dataset (local or gs://)")
    parser.add_argument("--out", required=True, type=paths.user_path, help="the new DATA/ folder to write the copy into (local or gs://)")
    parser.add_argument("--shard-mb", type=int, default=1024, help="about this many MiB of images per file")
    parser.add_argument("--workers", type=int, default=16, help="images read at a time")
    with error_boundary():
        args = parser.parse_args(argv)
        dst = convert(args.dataset, args.data, args.out, args.shard_mb, args.workers)
        print(f"wrote {dst}; run with data={args.out}")


if __name__ == "__main__":
    main()
