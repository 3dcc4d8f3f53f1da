"""CoOp's few-shot sampling, its JSON cache (paths relative to the image root) and the base/new class split."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from aple_jax import paths
from aple_jax.data.errors import NotEnoughShotsError, SplitFormatError, see_docs
from aple_jax.data.records import Datum

log = logging.getLogger(__name__)

SUBSAMPLES = ("all", "base", "new")
FEWSHOT_DIR = "split_fewshot"  # CoOp's cache folder inside a dataset directory


class FewShotWarning(UserWarning):
    """Some class has fewer images than the requested shots; all of them are kept (CoOp's `repeat=False`)."""


def group_by_label(records: Sequence[Datum]) -> dict[int, list[Datum]]:
    """Records per label, labels in order of first appearance (Dassl's `split_dataset_by_label`)."""
    groups: dict[int, list[Datum]] = {}
    for rec in records:
        groups.setdefault(rec.label, []).append(rec)
    return groups


def sample_fewshot(records: Sequence[Datum], num_shots: int, rng: random.Random) -> list[Datum]:
    """Per label in order of first appearance, `rng.sample(items, k)`; all items when fewer than k."""
    out: list[Datum] = []
    for items in group_by_label(records).values():
        out.extend(rng.sample(items, num_shots) if len(items) >= num_shots else items)
    return out


def sample_fewshot_splits(train: Sequence[Datum], val: Sequence[Datum] | None, num_shots: int,
                          seed: int) -> tuple[list[Datum], list[Datum] | None]:
    """CoOp's order of calls after `random.seed(seed)`: train with k shots, then val with min(k, 4)."""
    rng = random.Random(seed)
    train = sample_fewshot(train, num_shots, rng)
    val = None if val is None else sample_fewshot(val, min(num_shots, 4), rng)
    return train, val


def check_shots(records: Sequence[Datum], num_shots: int, classnames: Sequence[str], *, strict: bool,
                what: str) -> None:
    """Warns (or raises when strict) naming every class of `classnames` with fewer than `num_shots` records."""
    counts = Counter(r.label for r in records)
    short = [(y, counts[y]) for y in range(len(classnames)) if counts[y] < num_shots]
    if not short:
        return
    listed = ", ".join(f"{classnames[y]!r} (label {y}): {n}" for y, n in short[:10])
    msg = (f"{what}: {len(short)} class(es) have fewer than the {num_shots} shots requested: {listed}"
           f"{' ...' if len(short) > 10 else ''}. ")
    if strict:
        raise NotEnoughShotsError(msg + "Lower the shots or disable strict shots. " + see_docs("few-shot"))
    msg += (f"All of their images are kept (CoOp's behaviour): {what} has {len(records)} images, not "
            f"{len(classnames) * num_shots}.")
    log.warning(msg)
    warnings.warn(msg, FewShotWarning, stacklevel=2)


def fewshot_cache_path(cache_dir: str, num_shots: int, seed: int, tag: str = "") -> str:
    """`<cache_dir>/shot_{K}-seed_{S}.json`, or `shot_{K}-seed_{S}-{tag}.json` (one split file among several)."""
    return os.path.join(cache_dir, f"shot_{num_shots}-seed_{seed}{'-' + tag if tag else ''}.json")


def split_fingerprint(train: Sequence[Datum], val: Sequence[Datum] | None) -> str:
    """A hash of the full splits the shots are drawn from: a cache drawn from other splits is stale."""
    text = json.dumps([[list(r) for r in train], None if val is None else [list(r) for r in val]])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _records_from_json(items: list, path: str) -> list[Datum]:
    try:
        return [Datum(key, int(label), str(name)) for key, label, name in items]
    except (TypeError, ValueError) as e:
        raise SplitFormatError(f"{path}: entries must be [impath, label, classname]: {e}. "
                               + see_docs("split format")) from e


def read_fewshot_cache(path: str, source: str | None = None) -> tuple[list[Datum], list[Datum] | None] | None:
    """Reads a cached `{"train": [...], "val": [...]}` few-shot split (local or gs://); None when its `source`
    fingerprint says it was drawn from other splits than `source` (a cache without one, as CoOp users have, is taken
    as it is)."""
    try:
        data = json.loads(paths.as_path(path).read_text())
    except json.JSONDecodeError as e:
        raise SplitFormatError(f"few-shot cache {path} is not valid JSON ({e}); delete it to sample the shots "
                               f"again. " + see_docs("few-shot")) from None
    if not isinstance(data, dict) or "train" not in data:
        raise SplitFormatError(f"{path}: expected a JSON object with a 'train' list. " + see_docs("few-shot"))
    if source is not None and data.get("source", source) != source:
        log.warning("the few-shot cache %s was drawn from other splits than this run's; sampling again", path)
        return None
    val = data.get("val")
    return _records_from_json(data["train"], path), None if val is None else _records_from_json(val, path)


def write_fewshot_cache(path: str, train: Sequence[Datum], val: Sequence[Datum] | None,
                        source: str | None = None) -> None:
    """Writes the few-shot split atomically, from process 0 only (the others sample the same split themselves);
    an unwritable cache directory only costs a warning."""
    import jax
    if jax.process_index() != 0:
        return
    data: dict = {"train": [list(r) for r in train]} | ({"source": source} if source else {})
    if val is not None:
        data["val"] = [list(r) for r in val]
    try:
        paths.write_json_atomic(path, data, indent=4)
    except OSError as e:
        log.warning("could not cache the few-shot split at %s: %s", path, e)


def fewshot_splits(train: Sequence[Datum], val: Sequence[Datum] | None, *, num_shots: int, seed: int,
                   cache_path: str | None = None,
                   importer: Callable[[], tuple[list[Datum], list[Datum] | None]] | None = None,
                   ) -> tuple[list[Datum], list[Datum] | None]:
    """The cached sample at `cache_path` (unless drawn from other splits), else an imported one (CoOp's pickle),
    else a fresh CoOp sample."""
    source = split_fingerprint(train, val) if cache_path is not None else None
    if cache_path is not None and paths.as_path(cache_path).is_file():
        log.info("loading the few-shot split from %s", cache_path)
        cached = read_fewshot_cache(cache_path, source)
        if cached is not None:
            return cached
    train, val = importer() if importer is not None else sample_fewshot_splits(train, val, num_shots, seed)
    if cache_path is not None:
        write_fewshot_cache(cache_path, train, val, source)
        log.info("saved the few-shot split to %s", cache_path)
    return train, val


def select_classes(labels: Iterable[int], subsample: str) -> list[int]:
    """CoOp's base/new split of the sorted labels: the first ceil(n/2) are base, the rest new; "all" keeps all."""
    if subsample not in SUBSAMPLES:
        raise ValueError(f"subsample must be one of {SUBSAMPLES}, got {subsample!r}")
    labels = sorted(set(labels))
    m = math.ceil(len(labels) / 2)
    return {"all": labels, "base": labels[:m], "new": labels[m:]}[subsample]


def relabel(records: Sequence[Datum], selected: Sequence[int]) -> list[Datum]:
    """The records of the selected labels, relabelled 0..len(selected)-1 in the order of `selected`."""
    new = {y: i for i, y in enumerate(selected)}
    return [r._replace(label=new[r.label]) for r in records if r.label in new]
