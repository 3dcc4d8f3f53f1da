"""Importing CoOp's own caches (`split_fewshot/*.pkl`, ImageNet's `preprocessed.pkl`) without Dassl.

They hold Dassl `Datum` objects with absolute paths from the machine that wrote them; a restricted unpickler
accepts only `Datum` and the paths are cut back to the image root, so existing caches reproduce CoOp's shots.
"""
from __future__ import annotations

import pickle
from typing import Any

from aple_jax import paths
from aple_jax.data.errors import SplitFormatError, see_docs
from aple_jax.data.records import Datum


class _DasslDatum:
    """Stand-in for `dassl.data.datasets.base_dataset.Datum`; receives its pickled attribute dict."""


class _DatumOnlyUnpickler(pickle.Unpickler):
    """Loads plain containers and Dassl `Datum` objects; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if name == "Datum" and module.startswith("dassl."):
            return _DasslDatum
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CoOp caches hold only Datum objects")


def _relative(path: str, marker: str, source: str) -> str:
    """`path` after the last occurrence of `marker` (e.g. "/imagenet/images/")."""
    cut = path.replace("\\", "/").rfind(marker)
    if cut < 0:
        raise SplitFormatError(f"{source}: image path {path!r} does not contain {marker!r}, so it cannot be "
                               f"mapped into the current DATA/ tree. " + see_docs("few-shot"))
    return path.replace("\\", "/")[cut + len(marker):]


def _to_records(items: list, marker: str, source: str) -> list[Datum]:
    out = []
    for item in items:
        state = getattr(item, "__dict__", {})
        if not {"_impath", "_label", "_classname"} <= state.keys():
            raise SplitFormatError(f"{source}: expected Dassl Datum objects, got {type(item).__name__}. "
                                   + see_docs("few-shot"))
        out.append(Datum(_relative(state["_impath"], marker, source), int(state["_label"]), state["_classname"]))
    return out


def read_coop_pickle(path: str, marker: str) -> dict[str, list[Datum]]:
    """Every list of Datum in a CoOp pickle (`train`, `val`, `test`), with paths relative to the image root."""
    with paths.as_path(path).open("rb") as f:
        try:
            data = _DatumOnlyUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
            raise SplitFormatError(f"cannot read CoOp cache {path}: {e}. " + see_docs("few-shot")) from e
    if not isinstance(data, dict):
        raise SplitFormatError(f"{path}: expected a dict of Datum lists, got {type(data).__name__}. "
                               + see_docs("few-shot"))
    return {k: _to_records(v, marker, path) for k, v in data.items() if k in ("train", "val", "test")}
