"""Runs grouped over seeds: a group's runs must differ in their seed only; its per-eval statistics over seeds."""
from __future__ import annotations

import dataclasses
import functools
from collections import defaultdict
from typing import Any, Iterable

from aple_jax import stats
from aple_jax.errors import ReportError
from aple_jax.prompt_files import flatten_config
from aple_jax.reporting.runs import GroupKey, Run
from aple_jax.run import ADDED_KEYS, OPERATIONAL_KEYS, hm

# Where data and weights live says nothing about what a run computes: they may differ between seeds.
LOCATION_KEYS = ("dataset.root", "backbone.weights", "backbone.tokenizer")


@dataclasses.dataclass(frozen=True)
class Group:
    """The seeds of one (method, tag, backbone, setting, shots, dataset, evals)."""
    key: GroupKey
    runs: list[Run]

    @property
    def seeds(self) -> list[int]:
        return [r.results["seed"] for r in self.runs]

    @functools.cached_property
    def stats(self) -> dict[str, stats.Stat]:
        return {e: stats.Stat.of([r.accuracy[e] for r in self.runs]) for e in self.key.evals}

    @property
    def hm(self) -> float | None:
        """HM of the seed means (base-to-novel only)."""
        s = self.stats
        return hm(s["base"].mean, s["new"].mean) if "base" in s and "new" in s else None

    @property
    def prompt_length(self) -> dict[str, int]:
        return self.runs[0].results["prompt_length"]


def differing_keys(a: dict[str, Any], b: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """Dotted keys whose values differ between two config dicts, apart from seed, operational and location keys (a
    key added since one of them was written counts at the value it ran with)."""
    skip = ("seed", *OPERATIONAL_KEYS, *LOCATION_KEYS, *ignore)
    fa, fb = {**ADDED_KEYS, **flatten_config(a)}, {**ADDED_KEYS, **flatten_config(b)}
    return sorted(k for k in set(fa) | set(fb)
                  if fa.get(k) != fb.get(k) and not any(k == s or k.startswith(s + ".") for s in skip))


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs grouped over seeds, after checking that each group's runs differ in their seed only."""
    check_compatible(runs)
    by_key: dict[GroupKey, list[Run]] = defaultdict(list)
    for r in runs:
        by_key[r.key].append(r)
    return [Group(k, sorted(v, key=lambda r: r.results["seed"])) for k, v in sorted(by_key.items())]


def check_compatible(runs: list[Run]) -> None:
    """Runs of one method+tag+dataset+setting must share backbone, shots (bar few-shot) and config; seeds unique."""
    buckets: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        k = r.key
        buckets[(k.method, k.tag, k.dataset, k.setting, k.evals)].append(r)
    for bucket in buckets.values():
        first = bucket[0]
        # Few-shot ("all") sweeps vary the shots on purpose: shots are then part of the group, not a conflict.
        ignore = ("dataset.name", "dataset.shots") if first.key.setting == "all" else ("dataset.name",)
        for other in bucket[1:]:
            diff = differing_keys(first.results["config"], other.results["config"], ignore)
            if diff:
                k = first.key
                raise ReportError(
                    f"incompatible runs in one report: {first.path} and {other.path} are both method={k.method} "
                    f"tag={k.tag!r} dataset={k.dataset} setting={k.setting} but their configs differ in {diff}; "
                    f"give each variant its own tag (config field `tag`) or report them separately")
        seen: dict[tuple, str] = {}
        for r in bucket:
            seed_key = (r.results["seed"], r.results["shots"])
            if seed_key in seen:
                raise ReportError(f"{seen[seed_key]} and {r.path} are the same run (seed {seed_key[0]}, "
                                  f"{seed_key[1]} shots, same config); remove one")
            seen[seed_key] = r.path
