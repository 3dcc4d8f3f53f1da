"""Importing CoOp's own caches (`split_fewshot/*.pkl`, ImageNet's `preprocessed.pkl`) without Dassl.

They hold Dassl `Datum` objects with absolute paths from the machine that wrote them. They are data, never code:
`aple_jax.pickles` reads plain containers and an inert stand-in for `Datum`, refusing any other class or function
by name; the paths are cut back to the image root, so existing caches reproduce CoOp's shots.
"""
from __future__ import annotations

import pickle

from aple_jax import paths, pickles
from aple_jax.data.errors import SplitFormatError, see_docs
from aple_jax.data.records import Datum

DASSL_DATUM = "dassl.data.datasets.base_dataset.Datum"


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
        state = item.state if isinstance(item, pickles.Standin) else None
        if not isinstance(state, dict) or not {"_impath", "_label", "_classname"} <= state.keys():
            raise SplitFormatError(f"{source}: expected Dassl Datum objects, got {type(item).__name__}. "
                                   + see_docs("few-shot"))
        out.append(Datum(_relative(state["_impath"], marker, source), int(state["_label"]), state["_classname"]))
    return out


def read_coop_pickle(path: str, marker: str) -> dict[str, list[Datum]]:
    """Every list of Datum in a CoOp pickle (`train`, `val`, `test`), with paths relative to the image root."""
    with paths.as_path(path).open("rb") as f:
        try:
            data = pickles.load(f, [DASSL_DATUM])
        except pickles.RefusedGlobalError as e:
            raise SplitFormatError(pickles.refusal(f"CoOp cache {path}", e, f"CoOp caches hold {DASSL_DATUM} objects "
                                                                            "only") + ". " + see_docs("few-shot")) from None
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
            raise SplitFormatError(f"cannot read CoOp cache {path}: {e}. " + see_docs("few-shot")) from e
    if not isinstance(data, dict):
        raise SplitFormatError(f"{path}: expected a dict of Datum lists, got {type(data).__name__}. "
                               + see_docs("few-shot"))
    return {k: _to_records(v, marker, path) for k, v in data.items() if k in ("train", "val", "test")}
