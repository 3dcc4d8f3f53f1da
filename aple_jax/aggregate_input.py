"""A report's aggregate results.json read back as per-run results: each group's per-seed values, seeds and run names
become one result per seed, so that tables and `--compare` can be redone where the run directories are gone (the
world studies under docs/world_studies keep only their aggregates). Environments, histories and configs are not in an
aggregate: such runs report "environment not recorded"."""
from __future__ import annotations

from typing import Any

from aple_jax.errors import ReportError

AGGREGATE_KIND = "aple_jax.report"   # the `kind` of the aggregate results.json that aple_jax.report writes
_GROUP_KEYS = ("method", "tag", "backbone", "setting", "shots", "dataset", "evals", "seeds", "accuracy")


def is_aggregate(data: dict[str, Any]) -> bool:
    return data.get("kind") == AGGREGATE_KIND


def runs_from_aggregate(path: str, data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(run name, results) per seed of every group of the aggregate `data` read from `path`."""
    if not is_aggregate(data) or not isinstance(data.get("groups"), list):
        raise ReportError(f"{path} is not an aggregate written by `python -m aple_jax.report` (no kind "
                          f"{AGGREGATE_KIND!r} with groups); expected a runs directory or such a results.json")
    out = []
    for i, group in enumerate(data["groups"]):
        missing = [k for k in _GROUP_KEYS if k not in group]
        if missing:
            raise ReportError(f"{path}: groups[{i}] lacks keys {missing}")
        seeds, evals = group["seeds"], list(group["evals"])
        for e in evals:
            values = group["accuracy"].get(e, {}).get("values")
            if not isinstance(values, list) or len(values) != len(seeds):
                raise ReportError(f"{path}: groups[{i}] ({group['method']} on {group['dataset']}) has "
                                  f"{len(values) if isinstance(values, list) else 'no'} values for {e!r} but "
                                  f"{len(seeds)} seeds")
        names = group.get("runs") or []
        for j, seed in enumerate(seeds):
            name = names[j] if j < len(names) else f"{path}#{group['method']}/{group['dataset']}/seed{seed}"
            results = {"method": group["method"], "dataset": group["dataset"], "setting": group["setting"],
                       "seed": seed, "shots": group["shots"], "backbone": group["backbone"], "tag": group["tag"],
                       "prompt_length": group.get("prompt_length", {"text": 0, "vision": 0}),
                       "accuracy": {e: group["accuracy"][e]["values"][j] for e in evals}, "config": {}}
            out.append((name, results))
    if not out:
        raise ReportError(f"{path} holds no groups to report")
    return out
