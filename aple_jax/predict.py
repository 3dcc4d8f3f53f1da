"""Learned prompts on your own images and class names: the `Classifier` API and its command line.

    python -m aple_jax.predict --from RUN_DIR|prompts.npz|model.pth.tar-N|zeroshot --images DIR|FILE|GLOB ... \
        [--classes names.txt | --classes-from RUN_DIR] [--config configs/<method>.py:ARGS] [--topk 5] \
        [--out predictions.csv|predictions.jsonl]

A run directory and a prompts file written by aple-jax record the config that trained them; an official checkpoint,
an older prompts file and `zeroshot` take `--config`. docs/predict.md is the guide.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import io
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from aple_jax import config_schema, distill, evaluate, interop, paths, prompt_files, sharding, train
from aple_jax.clip.backbone import check_weights, load_backbone
from aple_jax.config_files import load_config
from aple_jax.data.errors import BadImageError, DataError
from aple_jax.data.image_files import decode_image, find_images
from aple_jax.data.pipeline import eval_loader
from aple_jax.data.templates import template_for
from aple_jax.errors import AplejaxError, CheckpointError, ConfigError, StorageError, error_boundary
from aple_jax.methods import build_method
from aple_jax.progress import make_progress
from aple_jax.run import HEADER_KEYS, load_trained_prompts, zero_shot_reference

ZEROSHOT = "zeroshot"            # --from zeroshot: frozen CLIP with the config's hand-crafted templates
DEFAULT_BATCH_SIZE = 128
FORMATS = (".csv", ".jsonl")
SOURCES = "a run directory, a prompts .npz, an official checkpoint (model.pth.tar-N) or 'zeroshot'"
_BLANK = np.zeros((1, 1, 3), np.uint8)   # stands in for an unreadable image (masked out, never scored)


class ClassNamesError(AplejaxError, ValueError):
    """A class-name list that is empty or names a class twice."""


# ---------------------------------------------------------------------------------------------------- class names

def check_classnames(names: Sequence[str], where: str) -> list[str]:
    """`names` as a list, refusing an empty list, an empty name and a name given twice (named in the error)."""
    names = [str(n) for n in names]
    if not names:
        raise ClassNamesError(f"{where} holds no class names", hint="give one class name a line")
    if any(not n.strip() for n in names):
        raise ClassNamesError(f"{where}: class {[n.strip() for n in names].index('')} has an empty name")
    seen, twice = set(), []
    for n in names:
        if n in seen and n not in twice:
            twice.append(n)
        seen.add(n)
    if twice:
        raise ClassNamesError(f"{where} names {len(twice)} class(es) more than once: "
                              f"{', '.join(map(repr, twice[:5]))}", hint="each class name must appear once")
    return names


def read_classnames(path: str) -> list[str]:
    """A text file (local or gs://) of class names, one a line; blank lines are skipped, spaces around names cut."""
    text = paths.require(path, "class names file").read_text()
    return check_classnames([line.strip() for line in text.splitlines() if line.strip()], f"class names file {path}")


def run_classnames(run_dir: str) -> list[str]:
    """The class names a run trained on (classnames.json), else those of its first evaluation (results.json)."""
    run_dir = paths.require(run_dir, "run directory")
    trained, results = run_dir / "classnames.json", run_dir / "results.json"
    if trained.exists():
        return check_classnames(paths.read_json(trained)["classnames"], str(trained))
    if results.exists():
        evals = paths.read_json(results).get("evals", {})
        named = [e["classnames"] for e in evals.values() if "classnames" in e]
        if named:
            return check_classnames(named[0], f"{results} (evaluation {next(iter(evals))!r})")
    raise ClassNamesError(f"run directory {run_dir} records no class names (no classnames.json, no class names in "
                          f"results.json)", hint="give --classes names.txt")


# ---------------------------------------------------------------------------------------------------- sources

def source_config(source: str, config: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
    """The config of `--from`: `config` when given (checked against what the source records, as eval-only runs
    check it), else the one the run directory or prompts file records."""
    if source == ZEROSHOT:
        if config is None:
            raise ConfigError("--from zeroshot needs --config configs/<method>.py:ARGS (its backbone and templates)")
        return config
    if not paths.as_path(source).exists():
        raise (paths.storage_error(source, "--from") if paths.is_remote(source)
               else StorageError(f"--from {source} does not exist", hint=f"give {SOURCES}"))
    path = paths.as_path(source)
    if path.is_dir() and not any((path / n).exists() for n in ("config.json", "prompts.npz", "checkpoints")):
        seeds = sorted(p.name for p in path.glob("seed*") if (p / "config.json").exists())
        raise CheckpointError(f"--from {source} is a folder but not a run directory (no config.json, prompts.npz or "
                              f"checkpoints)" + (f"; it holds the runs {', '.join(seeds)}" if seeds else ""),
                              hint=f"give one seed's directory, e.g. {path / seeds[0]}" if seeds else f"give {SOURCES}")
    if not path.is_dir() and path.suffix != ".npz" and not interop.is_official_checkpoint(path):
        raise CheckpointError(f"--from {source} is neither a prompts .npz nor an official checkpoint",
                              hint=f"give {SOURCES}")
    meta = prompt_files.source_meta(source)
    if config is not None:
        prompt_files.check_provenance(source, meta, config, None, None)
        return config
    recorded = _recorded_config(path, meta)
    if recorded is None:
        raise ConfigError(f"--from {source} records no config (an official checkpoint, or a prompts file written "
                          f"before prompts files recorded one)",
                          hint="pass --config configs/<method>.py:ARGS, the config it was trained with")
    return ml_collections.ConfigDict({k: v for k, v in recorded.items() if k not in HEADER_KEYS})


def _recorded_config(path, meta: dict[str, Any] | None) -> dict[str, Any] | None:
    if path.is_dir() and (path / "config.json").exists():
        return paths.read_json(path / "config.json")
    return (meta or {}).get("run_config")


def source_classnames(source: str) -> list[str]:
    """The class names a source was trained on: a run's, or those a prompts file records."""
    if source != ZEROSHOT and paths.as_path(source).is_dir():
        return run_classnames(source)
    if source != ZEROSHOT and not interop.is_official_checkpoint(source):
        trained = (prompt_files.read_prompts_meta(source) or {}).get("train")
        if trained:
            return check_classnames(trained["classnames"], f"{source} (its training classes)")
    raise ClassNamesError(f"--from {source} records no class names", hint="give --classes names.txt")


def trained_classnames(source: str) -> list[str]:
    """The classes a source was trained on (a tree with a row per class has one for each), or none it records."""
    try:
        return source_classnames(source)
    except ClassNamesError:
        return []


def dataset_template(name: str) -> str:
    """The hand-crafted template of a config's dataset (what zero-shot CLIP's `dataset` templates use)."""
    if name.startswith("world:"):
        from aple_jax.world import TEMPLATES
        return TEMPLATES[name[len("world:"):]]
    return template_for(name)


# ---------------------------------------------------------------------------------------------------- the classifier

class ImageItems:
    """Random-access source over image files (local or gs://) and uint8 (H, W, 3) arrays for the evaluation loader:
    `{"image", "label": 0, "valid"}`; a file that cannot be read is a blank image with `valid` False."""

    def __init__(self, items: Sequence[str | np.ndarray]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        if isinstance(item, np.ndarray):
            return {"image": item, "label": 0, "valid": True}
        try:
            return {"image": decode_image(item), "label": 0, "valid": True}
        except (DataError, OSError):
            return {"image": _BLANK, "label": 0, "valid": False}


def image_error(path: str) -> str:
    """Why an image file cannot be read (its decoding error, the file's own words)."""
    try:
        decode_image(path)
    except (DataError, OSError) as e:
        cause = e.__cause__ if isinstance(e, DataError) and e.__cause__ is not None else e
        return f"{type(cause).__name__}: {cause}"
    return ""


def as_items(images: Any) -> list[str | np.ndarray]:
    """Paths and uint8 (H, W, 3) RGB arrays from a path, an array (one image, or a stack of them) or a list."""
    if isinstance(images, (str, os.PathLike)):
        return [os.fspath(images)]
    if isinstance(images, np.ndarray) or isinstance(images, jax.Array):
        images = np.asarray(images)
        images = [images] if images.ndim == 3 else list(images)
    items = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else np.asarray(x) for x in images]
    for i, x in enumerate(items):
        if isinstance(x, np.ndarray) and (x.dtype != np.uint8 or x.ndim != 3 or x.shape[-1] != 3):
            raise ValueError(f"image {i}: a {x.dtype} array of shape {x.shape}; expected uint8 RGB (H, W, 3)")
    return items


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _scores(method, prompts, clip_params, class_side, images, topk, split):
    """(softmax probabilities over the classes at the model's logit scale,), or (top k of them, their indices)."""
    logits = evaluate.test_logits(method, prompts, clip_params, class_side, images, split).astype(np.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    return (probs,) if topk is None else tuple(jax.lax.top_k(probs, topk))


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One image's row: its path, its top-k class names and probabilities, or why it could not be read."""
    path: str
    classes: list[str]
    probs: list[float]
    error: str = ""


@dataclasses.dataclass(frozen=True)
class Classifier:
    """A method's prompts (none for zero-shot CLIP) on a frozen CLIP, scoring images against `classnames`.

    Images are test-transformed as in evaluation (short side resized, center crop, CLIP normalisation), batched,
    sharded over every device; the class text features are computed once per class set (`with_classes`). The classes
    the prompts trained on, in their order, are scored as the run scored them; any other class list as new classes
    (split "new": a method whose base-class logits differ, e.g. DePT's head or DPC's mix, uses its new-class ones).
    """
    method: Any
    prompts: Any
    clip_params: Any
    mesh: Any
    template: str                     # the dataset template zero-shot CLIP's text uses
    classnames: tuple[str, ...] = ()
    class_side: Any = None            # text features (C, P), or the class texts of per-image-text methods
    trained: tuple[str, ...] = ()     # the classes the prompts trained on (none recorded: every list scored "all")
    split: str = "all"                # "all" on the trained classes (or none recorded), else "new"
    batch_size: int = DEFAULT_BATCH_SIZE
    num_workers: int = 0
    progress: bool = False

    def with_classes(self, names: Sequence[str]) -> Classifier:
        """The same model for other class names, their text features computed here, once."""
        names = check_classnames(names, "class names")
        side = evaluate.class_side(self.method, self.prompts, self.clip_params, names, self.template)
        split = "all" if not self.trained or tuple(names) == self.trained else "new"
        return dataclasses.replace(self, classnames=tuple(names), class_side=side, split=split)

    def predict(self, images: Any) -> np.ndarray:
        """(N, C) probabilities of images given as paths (local or gs://) or uint8 RGB arrays; an unreadable file
        is a BadImageError naming it."""
        items = as_items(images)
        valid, (probs,) = self._run(items, None)
        if not valid.all():
            bad = [items[i] for i in np.flatnonzero(~valid)]
            raise BadImageError(f"{len(bad)} image(s) cannot be read: "
                                + "; ".join(f"{p} ({image_error(p)})" for p in bad[:3]))
        return probs

    def classify(self, images: Any, topk: int = 5) -> list[Prediction]:
        """One Prediction per image: the top-k classes (at most all of them) and their probabilities, or the
        error of a file that cannot be read."""
        items = as_items(images)
        k = min(topk, len(self.classnames))
        valid, (probs, indices) = self._run(items, k)
        rows = []
        for item, ok, p, idx in zip(items, valid, probs, indices):
            name = item if isinstance(item, str) else ""
            if ok:
                rows.append(Prediction(name, [self.classnames[i] for i in idx], [float(x) for x in p]))
            else:
                rows.append(Prediction(name, [], [], image_error(item)))
        return rows

    def _run(self, items: list, topk: int | None) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """(valid (N,), outputs with N rows): every batch scored on every device, fetched as it finishes."""
        if not items:
            raise ValueError("no images to classify")
        loader = eval_loader(ImageItems(items), global_batch_size=self.batch_size,
                             image_size=self.method.backbone.cfg.image_resolution, mesh=self.mesh,
                             num_workers=self.num_workers)
        progress = make_progress(len(loader), enabled=self.progress, stream=sys.stderr)
        if progress is not None:
            progress.start_phase("predict", 0, 0)
        masks, outputs = [], []
        try:
            for step, batch in enumerate(loader, 1):
                out = _scores(self.method, self.prompts, self.clip_params, self.class_side, batch["image"], topk,
                              self.split)
                mask, out = jax.device_get((batch["mask"], out))
                masks.append(mask)
                outputs.append(out)
                if progress is not None:
                    progress.advance(step)
        finally:
            if progress is not None:
                progress.close()
        n = len(items)
        return np.concatenate(masks)[:n], tuple(np.concatenate(parts)[:n] for parts in zip(*outputs))


def load_classifier(source: str, classnames: Sequence[str] | None = None,
                    config: ml_collections.ConfigDict | None = None, *, batch_size: int = DEFAULT_BATCH_SIZE,
                    num_workers: int = 0, progress: bool = False) -> Classifier:
    """A Classifier from a run directory, a prompts file, an official checkpoint (with `config`) or `"zeroshot"`
    (with `config`); `classnames` default to those the source was trained on."""
    config = source_config(source, config)
    names = check_classnames(classnames, "class names") if classnames is not None else source_classnames(source)
    config_schema.validate(config, check_paths=False)
    if "kd" in config and not config.kd.teacher:   # a distilled student scores against its teacher's text features
        raise distill.no_teacher(f"--from {source}")
    b = config.backbone
    check_weights(b.name, b.weights)
    backbone, clip_params, tokenizer = load_backbone(b.name, b.weights, b.tokenizer, b.dtype)
    mesh = sharding.make_mesh()
    clip_params = sharding.replicate(clip_params, mesh)
    trained = []
    if source == ZEROSHOT or config.method == ZEROSHOT:
        method, prompts = zero_shot_reference(config, backbone, tokenizer), {}
    else:
        method = build_method(config, backbone, tokenizer)
        phases = train.scale_phases(method.phases(), config.optim.epoch_scale)
        trained = trained_classnames(source)
        like = method.init(jax.random.key(config.seed), clip_params, trained)
        prompts = load_trained_prompts(source, method, phases, like)
    return Classifier(method, sharding.replicate(prompts, mesh), clip_params, mesh,
                      dataset_template(config.dataset.name), trained=tuple(trained), batch_size=batch_size,
                      num_workers=num_workers, progress=progress).with_classes(names)


# ---------------------------------------------------------------------------------------------------- the CLI

def output_format(out: str | None) -> str:
    """`.csv` or `.jsonl` from the output path (CSV on stdout without one)."""
    if out is None:
        return ".csv"
    ext = os.path.splitext(out)[1].lower()
    if ext not in FORMATS:
        raise ConfigError(f"--out {out}: expected a .csv or .jsonl file")
    return ext


def format_rows(rows: Sequence[Prediction], fmt: str, k: int) -> str:
    """CSV (`path,error,class_1,prob_1,...,class_k,prob_k`) or JSON lines (`{"path", "classes", "probs"}` or
    `{"path", "error"}`) with probabilities written exactly (shortest round-tripping decimals)."""
    if fmt == ".jsonl":
        return "".join(json.dumps({"path": r.path, "error": r.error} if r.error else
                                  {"path": r.path, "classes": r.classes, "probs": r.probs}) + "\n" for r in rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "error"] + [f"{w}_{i}" for i in range(1, k + 1) for w in ("class", "prob")])
    for r in rows:
        cells = [c for pair in zip(r.classes, map(repr, r.probs)) for c in pair]
        writer.writerow([r.path, r.error] + cells + [""] * (2 * k - len(cells)))
    return buffer.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aple_jax.predict", description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", required=True, help=f"the prompts: {SOURCES}")
    parser.add_argument("--images", nargs="+", required=True, metavar="DIR|FILE|GLOB",
                        help="folders (searched recursively for image files), image files or glob patterns, local "
                             "or gs://")
    names = parser.add_mutually_exclusive_group()
    names.add_argument("--classes", metavar="NAMES.TXT", help="class names, one a line (default: the source's)")
    names.add_argument("--classes-from", metavar="RUN_DIR", help="the class names a run trained on")
    parser.add_argument("--config", metavar="CONFIGS/METHOD.PY:ARGS",
                        help="the config of an official checkpoint, of a prompts file that records none, or of "
                             "zeroshot (its backbone); for other sources, checked against what they record")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a field of --config (repeatable), e.g. backbone.weights=/ckpt/vit-b-16")
    parser.add_argument("--topk", type=int, default=5, help="classes per image (default 5)")
    parser.add_argument("--out", help="predictions.csv or predictions.jsonl, local or gs:// (default: CSV on "
                                      "stdout)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per step, all devices")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes (default 0: threads)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or lines on stderr")
    args = parser.parse_args(argv)
    with error_boundary():
        fmt = output_format(args.out)
        if args.topk < 1 or args.batch_size < 1:
            raise ConfigError(f"--topk {args.topk} --batch-size {args.batch_size}: both must be at least 1")
        if args.override and not args.config:
            raise ConfigError("--override sets fields of --config: give --config too")
        config = load_config(args.config, args.override) if args.config else None
        classnames = (read_classnames(args.classes) if args.classes else
                      run_classnames(args.classes_from) if args.classes_from else None)
        images = find_images(args.images)
        classifier = load_classifier(args.source, classnames, config, batch_size=args.batch_size,
                                     num_workers=args.workers, progress=not args.no_progress)
        rows = classifier.classify(images, args.topk)
        text = format_rows(rows, fmt, min(args.topk, len(classifier.classnames)))
        if args.out:
            paths.write_text_atomic(args.out, text)
        else:
            sys.stdout.write(text)
    failed = sum(bool(r.error) for r in rows)
    print(f"{len(rows)} images, {len(classifier.classnames)} classes"
          + (f", {failed} unreadable (rows with an error)" if failed else "") + f" -> {args.out or 'stdout'}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
