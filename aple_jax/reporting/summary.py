"""The aggregate over datasets (results.json), by the field's rules (protocol.md section 5): per group of seeds the
mean; base-to-novel HM = HM of the seed means; the 11-dataset average = mean of per-dataset Base and of per-dataset
Novel, its HM = HM of those two averages; cross-dataset average = plain mean over the 10 targets of the per-target seed
means. Beside each mean: the sample std (n-1; Dassl's `parse_test_res.py` prints the population std) and the 95%
Student-t interval of the mean over seeds (aple_jax/stats.py). An average's interval is over the per-seed averages
(seed s: the mean over datasets, or targets, of seed s), over the seeds every dataset has.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

from aple_jax import compare, environment, stats
from aple_jax import reference_numbers as ref
from aple_jax.reporting.groups import Group
from aple_jax.reporting.runs import REPORT_KIND, GroupKey, source_list
from aple_jax.run import hm
from aple_jax.world.datasets import SUITE as WORLD_SUITE
from configs.common import (CROSS_DATASET_TARGETS, IMAGENET_VARIANTS, WORLD_DG_TARGETS, WORLD_TRANSFER_SOURCE,
                            WORLD_XD_TARGETS)

BASE2NEW_DATASETS = ("ImageNet",) + CROSS_DATASET_TARGETS
SUITES = (BASE2NEW_DATASETS, WORLD_SUITE)   # the dataset sets an average is complete over


class TransferTable(NamedTuple):
    """One transfer table of results.md: runs trained on `source`, a column per target, a mean over them or not."""
    key: str                  # its list in results.json
    title: str
    source: str
    targets: tuple[str, ...]
    average: bool


def _world_names(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(n[len("world:"):] for n in names)


# The field's two (protocol.md section 5) and the world's analogues (`:world,xd` and `:world,dg`).
_WORLD_SOURCE = _world_names([WORLD_TRANSFER_SOURCE])[0]
TRANSFER_TABLES = (
    TransferTable("cross_dataset", "Cross-dataset: ImageNet (source) -> 10 targets", "ImageNet",
                  CROSS_DATASET_TARGETS, True),
    TransferTable("domain_generalization", "Domain generalization: ImageNet (source) -> variants", "ImageNet",
                  IMAGENET_VARIANTS, False),
    TransferTable("world_cross_dataset", f"World cross-dataset: {_WORLD_SOURCE} (source) -> the other families",
                  _WORLD_SOURCE, _world_names(WORLD_XD_TARGETS), True),
    TransferTable("world_domain_generalization",
                  f"World domain generalization: {_WORLD_SOURCE} (source) -> its classes under the other shifts",
                  _WORLD_SOURCE, _world_names(WORLD_DG_TARGETS), True),
)


def label(method: str, tag: str, transductive: bool = False) -> str:
    """A system's name; a transductive one carries its mark wherever it is named (tables, plots, --compare): it is
    never ranked unmarked."""
    name = f"{method} [{tag}]" if tag else method
    return f"{name} {compare.TRANSDUCTIVE}" if transductive else name


def system_label(s: dict[str, Any]) -> str:
    """The label of a summary row (a system: method, tag, transductive)."""
    return label(s["method"], s["tag"], s.get("transductive", False))


def _system(k: GroupKey) -> dict[str, Any]:
    return {"method": k.method, "tag": k.tag, "backbone": k.backbone, "shots": k.shots, "transductive": k.transductive}


def base2new_average(per_dataset: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The field's average: mean Base, mean Novel, HM of those; over the 11 datasets (the field's, or the world
    suite's), or flagged incomplete."""
    suite = next((s for s in SUITES if all(d in per_dataset for d in s)), None)
    complete = suite is not None
    names = list(suite) if complete else list(per_dataset)
    base = float(np.mean([per_dataset[d]["base"] for d in names]))
    new = float(np.mean([per_dataset[d]["new"] for d in names]))
    out = {"datasets": names, "complete": complete, "base": base, "new": new, "hm": hm(base, new)}
    for e in ("base", "new"):    # the interval over seeds of the per-seed averages
        per_seed = stats.per_seed_average({d: dict(zip(per_dataset[d]["seeds"], per_dataset[d][f"{e}_values"]))
                                           for d in names if "seeds" in per_dataset[d]})
        out[f"{e}_per_seed"] = dataclasses.asdict(stats.Stat.of(list(per_seed.values()))) if per_seed else None
        out["seeds"] = sorted(per_seed)
    return out


def summarize_base2new(groups: list[Group]) -> list[dict[str, Any]]:
    """Per (method, tag, backbone, shots): per-dataset Base/Novel seed means and stds, HM of means, the average."""
    systems: dict[tuple, dict[str, Group]] = defaultdict(dict)
    for g in groups:
        if g.key.setting == "base2new":
            systems[tuple(_system(g.key).values())][g.key.dataset] = g
    out = []
    for key, by_dataset in systems.items():
        per_dataset = {d: {"hm": g.hm, "seeds": g.seeds,
                           **{f"{e}{suffix}": value for e in ("base", "new")
                              for suffix, value in (("", g.stats[e].mean), ("_std", g.stats[e].std),
                                                    ("_ci95", g.stats[e].ci95), ("_values", g.stats[e].values))}}
                       for d, g in sorted(by_dataset.items(), key=lambda kv: dataset_order(kv[0]))}
        system = _system(next(iter(by_dataset.values())).key)
        out.append({**system, "datasets": per_dataset, "average": base2new_average(per_dataset)})
    return out


def summarize_transfer(groups: list[Group], table: TransferTable) -> list[dict[str, Any]]:
    """Transfer groups trained on the table's source and evaluated on any of its targets: per-target seed means
    (+ plain mean)."""
    targets, out = table.targets, []
    for g in groups:
        if g.key.setting != "transfer" or g.key.dataset != table.source or not set(targets) & set(g.key.evals):
            continue
        group_stats = g.stats
        row = {**_system(g.key), "source": g.key.dataset, "seeds": g.seeds,
               "accuracy": {t: dataclasses.asdict(s) for t, s in group_stats.items()}}
        if table.average:
            present = [t for t in targets if t in group_stats]
            per_seed = stats.per_seed_average({t: dict(zip(g.seeds, group_stats[t].values)) for t in present})
            row["average"] = {"targets": present, "complete": len(present) == len(targets),
                              "accuracy": float(np.mean([group_stats[t].mean for t in present])),
                              "per_seed": dataclasses.asdict(stats.Stat.of(list(per_seed.values())))}
        out.append(row)
    return out


def summarize(runs_dir: str | Sequence[str], groups: list[Group], reference: bool) -> dict[str, Any]:
    """The machine-readable aggregate (written as results.json); `runs_dir`: its source or sources, recorded as
    given, and the runs by their names relative to the first (`load_runs`)."""
    summary: dict[str, Any] = {
        "kind": REPORT_KIND, "runs_dir": " + ".join(source_list(runs_dir)),
        "num_runs": sum(len(g.runs) for g in groups),
        "groups": [{**g.key._asdict(), "seeds": g.seeds, "runs": [r.name for r in g.runs],
                    "prompt_length": g.prompt_length,
                    "accuracy": {e: dataclasses.asdict(s) for e, s in g.stats.items()},
                    **({"hm": g.hm} if g.hm is not None else {})} for g in groups],
        "base2new": summarize_base2new(groups),
        **{t.key: summarize_transfer(groups, t) for t in TRANSFER_TABLES},
        "environments": table_environments(groups),
    }
    if reference:
        summary["reference"] = {"base2new_average": ref.BASE2NEW_AVERAGE,
                                "base2new_per_dataset": ref.BASE2NEW_PER_DATASET,
                                "domain_generalization": ref.DOMAIN_GENERALIZATION,
                                "sources": {"per_dataset": ref.PER_DATASET_SOURCE, "dg": ref.DG_SOURCE}}
    return summary


def table_environments(groups: list[Group]) -> dict[str, Any]:
    """Per table (base2new, each transfer table, groups: every run), the environments of the runs it shows."""
    def of(selected: Iterable[Group]) -> dict[str, Any]:
        return environment.summarize((r.name, r.results) for g in selected for r in g.runs)

    out = {"base2new": of(g for g in groups if g.key.setting == "base2new")}
    for t in TRANSFER_TABLES:
        out[t.key] = of(g for g in groups if g.key.setting == "transfer" and g.key.dataset == t.source
                        and set(t.targets) & set(g.key.evals))
    out["groups"] = of(groups)
    return out


def dataset_order(name: str) -> tuple[int, str]:
    order = BASE2NEW_DATASETS + IMAGENET_VARIANTS
    return (order.index(name), "") if name in order else (len(order), name)
