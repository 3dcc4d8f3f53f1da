"""Results as tables and plots: one run's summary, and `python -m aple_jax.report RUNS_DIR` over many runs.

The report follows the field's aggregation rules (protocol.md section 5): per group of seeds the mean; base-to-novel
HM = HM of the seed means; the 11-dataset average = mean of per-dataset Base and of per-dataset Novel, its HM = HM of
those two averages; cross-dataset average = plain mean over the 10 targets of the per-target seed means. Beside each
mean: the sample std (n-1; Dassl's `parse_test_res.py` prints the population std) and the 95% Student-t interval of
the mean over seeds (aple_jax/stats.py). An average's interval is over the per-seed averages (seed s: the mean over
datasets, or targets, of seed s), over the seeds every dataset has.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import sys
import tempfile
from collections import defaultdict
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

from aple_jax import aggregate_input, compare, environment, paths, stats
from aple_jax import reference_numbers as ref
from aple_jax.data.errors import UnknownDatasetError
from aple_jax.data.names import canonical_name
from aple_jax.errors import ReportError, error_boundary
from aple_jax.prompt_files import flatten_config
from aple_jax.report_classes import write_per_class
from aple_jax.run import ADDED_KEYS, OPERATIONAL_KEYS, hm
from aple_jax.world.datasets import SUITE as WORLD_SUITE
from configs.common import (CROSS_DATASET_TARGETS, IMAGENET_VARIANTS, WORLD_DG_TARGETS, WORLD_TRANSFER_SOURCE,
                            WORLD_XD_TARGETS)

REPORT_KIND = aggregate_input.AGGREGATE_KIND      # marks our aggregate results.json so that a later scan skips it
BASE2NEW_DATASETS = ("ImageNet",) + CROSS_DATASET_TARGETS
SUITES = (BASE2NEW_DATASETS, WORLD_SUITE)   # the dataset sets an average is complete over
REQUIRED_KEYS = ("method", "dataset", "setting", "seed", "shots", "backbone", "tag", "prompt_length", "accuracy",
                 "config")
# Where data and weights live says nothing about what a run computes: they may differ between seeds.
LOCATION_KEYS = ("dataset.root", "backbone.weights", "backbone.tokenizer")
_TABLE_NAMES = {"OxfordFlowers": "Flowers102", "DescribableTextures": "DTD"}
_HISTORY_META = ("phase", "epoch", "step")
ERROR_BARS = "95% interval of the mean over seeds (Student t)"


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


def format_run(results: dict[str, Any] | list[dict[str, Any]]) -> str:
    """A Markdown table of one run's accuracies (and HM for base-to-novel); for packed seeds a row per seed, then
    their mean ± sample std and 95% interval, and a line saying so; a plug-in run's base method (`base_run`),
    zero-shot CLIP (`zeroshot.compare`) and a distilled run's teacher below it; a transductive run is marked."""
    runs = results if isinstance(results, list) else [results]
    names, with_hm = list(runs[0]["accuracy"]), "hm" in runs[0]
    header = "| method | dataset | seed | " + " | ".join(names) + (" | HM |" if with_hm else " |")
    rule = "|" + "---|" * (3 + len(names) + with_hm)
    rows = _seed_rows(runs, names, with_hm)
    if all("base_method" in r for r in runs):
        rows += _seed_rows([r["base_method"] for r in runs], names, with_hm)
    note = []
    if len(runs) > 1:
        note = [f"\n{len(runs)} seeds: mean ± sample std (n-1); 95% interval of the mean (Student t)"
                + ("; HM of the means" if with_hm else "")]
    # the frozen-CLIP row of `zeroshot.compare` (the same test images for every seed)
    rows += [_row(["zero-shot CLIP", r["dataset"], "-"], r["zero_shot"]["accuracy"], names, with_hm)
             for r in runs[:1] if "zero_shot" in r]
    # a distilled run's teacher, as its own run scored it (a teacher trained on the base classes, with labels)
    rows += [_row([f"teacher: {t['method']} ({os.path.basename(str(t['backbone']).rstrip('/'))})", r["dataset"], "-"],
                  t["accuracy"], names, with_hm)
             for r in runs[:1] for t in [r.get("kd_teacher", {})] if set(names) <= set(t.get("accuracy", {}))]
    if runs[0].get("transductive"):
        note.append("\n" + TRANSDUCTIVE_NOTE)
    return "\n".join([header, rule, *rows, *note])


def _seed_rows(runs: list[dict[str, Any]], names: list[str], with_hm: bool) -> list[str]:
    """A row per seed; for several, their mean ± sample std and 95% interval."""
    name = label(runs[0]["method"], "", runs[0].get("transductive", False))
    rows = [_row([name, r["dataset"], str(r["seed"])], r["accuracy"], names, with_hm) for r in runs]
    if len(runs) > 1:
        s = {n: stats.Stat.of([r["accuracy"][n] for r in runs]) for n in names}
        first = [name, runs[0]["dataset"]]
        rows.append("| " + " | ".join(first + ["mean ± std"] + [f"{s[n].mean:.2f} ± {s[n].std:.2f}" for n in names]
                                      + ([f"{hm(s['base'].mean, s['new'].mean):.2f}"] if with_hm else [])) + " |")
        rows.append("| " + " | ".join(first + ["95% interval"]
                                      + [f"[{s[n].ci95[0]:.2f}, {s[n].ci95[1]:.2f}]" for n in names]
                                      + (["–"] if with_hm else [])) + " |")
    return rows


def _row(cells: list[str], accuracy: dict[str, float], names: list[str], with_hm: bool) -> str:
    cells = cells + [f"{accuracy[n]:.2f}" for n in names]
    if with_hm:
        cells.append(f"{hm(accuracy['base'], accuracy['new']):.2f}")
    return "| " + " | ".join(cells) + " |"


# ---------------------------------------------------------------------------------------------------- runs, groups

def dataset_name(name: str) -> str:
    """The field's table name of a dataset spelling ("dtd" -> "DTD", "world:WorldObjects" -> "WorldObjects");
    names the data package lacks pass through."""
    if name.startswith("world:"):
        return name[len("world:"):]
    try:
        name = canonical_name(name)
    except UnknownDatasetError:
        return name
    return _TABLE_NAMES.get(name, name)


class GroupKey(NamedTuple):
    method: str
    tag: str
    backbone: str
    setting: str
    shots: int
    dataset: str
    evals: tuple[str, ...]   # base/new, all, or the transfer targets
    transductive: bool = False   # trained on unlabeled images of classes it is tested on (results.json)


@dataclasses.dataclass(frozen=True)
class Run:
    path: str                 # the run directory (for a run rebuilt from an aggregate: the name the aggregate records)
    results: dict[str, Any]
    name: str                 # what a report records: the run directory relative to its runs directory (run_name)

    @property
    def key(self) -> GroupKey:
        r = self.results
        evals = tuple(dataset_name(e) if r["setting"] == "transfer" else e for e in r["accuracy"])
        return GroupKey(r["method"], r["tag"], r["backbone"], r["setting"], r["shots"], dataset_name(r["dataset"]),
                        evals, bool(r.get("transductive", False)))

    @property
    def accuracy(self) -> dict[str, float]:
        """Accuracies under the report's eval names (transfer targets as table names)."""
        return dict(zip(self.key.evals, self.results["accuracy"].values()))


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


def load_runs(source: str | Sequence[str], skip_unfinished: bool = False) -> list[Run]:
    """The runs below a runs directory, or rebuilt from an aggregate results.json (aple_jax/aggregate_input.py); of
    several such sources together, named relative to the first (the folder of an aggregate given first)."""
    sources = _sources(source)
    base = _parent(sources[0]) if paths.as_path(sources[0]).is_file() else sources[0]
    runs = []
    for one in sources:
        if paths.as_path(one).is_file():   # the names it records, as they are (absolute in aggregates before)
            runs += [Run(p, r, p) for p, r in aggregate_input.runs_from_aggregate(one, read_json(one))]
        else:
            runs += [dataclasses.replace(r, name=run_name(r.path, base)) for r in find_runs(one, skip_unfinished)]
    return runs


def run_name(path: str, runs_dir: str) -> str:
    """A run directory as a report records it: relative to `runs_dir`, so that the aggregate reads the same wherever
    the runs directory lies (as it is where the two are not on the same storage)."""
    if paths.is_remote(path) != paths.is_remote(runs_dir):
        return path
    strip = lambda p: p.split("://", 1)[-1]
    return os.path.relpath(strip(path), strip(runs_dir))


def find_runs(runs_dir: str, skip_unfinished: bool = False) -> list[Run]:
    """Every run's results.json below `runs_dir`, named relative to it; unfinished run directories raise unless
    skipped."""
    if not paths.as_path(runs_dir).is_dir():
        raise ReportError(f"runs directory {runs_dir} does not exist")
    runs, unfinished = [], []
    for path, dirs, files in _walk(os.fspath(runs_dir)):
        started = "config.json" in files or "checkpoints" in dirs
        dirs[:] = sorted(d for d in dirs if d != "checkpoints")
        if "results.json" in files:
            results = _read_results(os.path.join(path, "results.json"))
            if results is not None:
                runs.append(Run(path, results, run_name(path, runs_dir)))
        elif started:
            unfinished.append(path)
    if unfinished and not skip_unfinished:
        raise ReportError("run directories without results.json (the run has not finished: still running, stopped "
                          "or crashed; re-run its command to resume, or pass --skip-unfinished): "
                          + ", ".join(unfinished))
    if not runs:
        raise ReportError(f"no results.json found below {runs_dir}; expected run directories written by launch.py "
                          f"or `python -m aple_jax.sweep`")
    return runs


def _walk(top: str) -> Iterable[tuple[str, list[str], list[str]]]:
    """`os.walk` (top-down; prune by editing `dirs`) over a local or gs:// tree, one listing per directory."""
    entries = paths.list_dir(top)
    dirs = sorted(name for name, is_dir in entries if is_dir)
    files = sorted(name for name, is_dir in entries if not is_dir)
    yield top, dirs, files
    for d in dirs:
        yield from _walk(os.path.join(top, d))


def read_json(path: str) -> dict[str, Any]:
    """A JSON object from a file (local or gs://), or a ReportError naming the file."""
    try:
        data = json.loads(paths.as_path(path).read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path} is not valid JSON ({e}): a half-written or edited file?",
                          hint=f"delete {path} and rerun that run (it evaluates again from its checkpoints), or "
                               f"pass --skip-unfinished after deleting it") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path} holds a {type(data).__name__}; expected a JSON object")
    return data


def _read_results(path: str) -> dict[str, Any] | None:
    """A run's results, or None for an aggregate written by this module."""
    results = read_json(path)
    if results.get("kind") == REPORT_KIND:
        return None
    missing = [k for k in REQUIRED_KEYS if k not in results]
    if missing:
        raise ReportError(f"{path} lacks keys {missing}; expected a run's results.json as aple_jax.run writes it")
    return results


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


# ---------------------------------------------------------------------------------------------------- aggregation

# A transductive row's mark wherever it is named (tables, plots, --compare): it is never ranked unmarked.
TRANSDUCTIVE = compare.TRANSDUCTIVE
TRANSDUCTIVE_NOTE = (f"Rows marked {TRANSDUCTIVE} trained on unlabeled images of the classes they are tested on "
                     "(PromptKD: the training images of base and new classes); they are not comparable with the "
                     "other, inductive rows.")


def label(method: str, tag: str, transductive: bool = False) -> str:
    name = f"{method} [{tag}]" if tag else method
    return f"{name} {TRANSDUCTIVE}" if transductive else name


def _label(s: dict[str, Any]) -> str:
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
                       for d, g in sorted(by_dataset.items(), key=lambda kv: _dataset_order(kv[0]))}
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
        "kind": REPORT_KIND, "runs_dir": " + ".join(_sources(runs_dir)), "num_runs": sum(len(g.runs) for g in groups),
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


def _dataset_order(name: str) -> tuple[int, str]:
    order = BASE2NEW_DATASETS + IMAGENET_VARIANTS
    return (order.index(name), "") if name in order else (len(order), name)


# ---------------------------------------------------------------------------------------------------- Markdown

def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(stat: dict[str, Any] | None, mean: float | None = None) -> str:
    """A Stat's cell (`mean ± std [95% interval]`); `mean` replaces the shown mean (an average's field rule)."""
    if stat is None:
        return f"{mean:.2f} (no interval)"
    s = stats.Stat(**stat)
    return s.cell() if mean is None else dataclasses.replace(s, mean=mean).cell()


def _seeds(seeds: Sequence[int]) -> str:
    return ",".join(str(s) for s in seeds)


def base2new_average_table(summary: dict[str, Any], reference: bool) -> str:
    rows = []
    for s in summary["base2new"]:
        a = s["average"]
        n = str(len(a["datasets"])) if a["complete"] else f"average over {len(a['datasets'])} datasets (incomplete)"
        rows.append([_label(s), s["backbone"], s["shots"], n, _seeds(a["seeds"]),
                     _cell(a["base_per_seed"], a["base"]), _cell(a["new_per_seed"], a["new"]), f"{a['hm']:.2f}",
                     "this report"])
    if reference:
        rows += [[f"{m} (reference)", "ViT-B/16", 16, "11", "–", f"{b:.2f}", f"{n:.2f}", f"{h:.2f}", src]
                 for m, (b, n, h, src) in ref.BASE2NEW_AVERAGE.items()]
    return _table(["Method", "Backbone", "Shots", "Datasets", "Seeds", "Base", "Novel", "HM", "Source"], rows)


def base2new_dataset_table(summary: dict[str, Any], reference: bool) -> str:
    by_dataset: dict[str, list[list[Any]]] = defaultdict(list)
    for s in summary["base2new"]:
        for d, v in s["datasets"].items():
            cells = [_cell({k: v[f"{e}{suffix}"] for k, suffix in (("mean", ""), ("std", "_std"),
                                                                      ("values", "_values"), ("ci95", "_ci95"))})
                     for e in ("base", "new")]
            by_dataset[d].append([d, _label(s), s["backbone"], s["shots"], _seeds(v["seeds"]),
                                  *cells, f"{v['hm']:.2f}"])
    for d in by_dataset:
        if reference:
            by_dataset[d] += [[d, f"{m} (reference)", "ViT-B/16", 16, "–", f"{b:.2f}", f"{n:.2f}", f"{h:.2f}"]
                              for m, table in ref.BASE2NEW_PER_DATASET.items() if d in table
                              for b, n, h in [table[d]]]
    rows = [row for d in sorted(by_dataset, key=_dataset_order) for row in by_dataset[d]]
    return _table(["Dataset", "Method", "Backbone", "Shots", "Seeds", "Base", "Novel", "HM"], rows)


def transfer_table(rows_in: list[dict[str, Any]], table: TransferTable,
                   references: dict[str, dict[str, float]]) -> str:
    columns, average = [table.source, *table.targets], table.average
    rows = []
    for s in rows_in:
        acc = s["accuracy"]
        cells = [_cell(acc[t]) if t in acc else "–" for t in columns]
        row = [_label(s), s["backbone"], s["shots"], _seeds(s["seeds"]), *cells]
        if average:
            a = s["average"]
            row.append(_cell(a["per_seed"], a["accuracy"]) if a["complete"]
                       else f"{_cell(a['per_seed'], a['accuracy'])} (average over {len(a['targets'])} targets, "
                            f"incomplete)")
        rows.append(row)
    rows += [[f"{m} (reference)", "ViT-B/16", 16, "–", *(f"{r[t]:.2f}" if t in r else "–" for t in columns)]
             for m, r in references.items()]
    return _table(["Method", "Backbone", "Shots", "Seeds", *columns, *(["Average"] if average else [])], rows)


def groups_table(summary: dict[str, Any]) -> str:
    rows = []
    for g in summary["groups"]:
        accs = ", ".join(f"{e} {_cell(s)}" for e, s in g["accuracy"].items())
        rows.append([_label(g), g["backbone"], g["setting"], g["shots"], g["dataset"],
                     _seeds(g["seeds"]), accs + (f", HM {g['hm']:.2f}" if "hm" in g else "")])
    return _table(["Method", "Backbone", "Setting", "Shots", "Dataset", "Seeds", "Accuracy (mean ± std [95%])"], rows)


def markdown(summary: dict[str, Any], reference: bool) -> str:
    """results.md: the field's tables with our rows (and, with `reference`, the published rows)."""
    parts = [f"# Results: {summary['runs_dir']}",
             f"{summary['num_runs']} runs in {len(summary['groups'])} groups. Cells: {stats.LEGEND}. "
             "Base-to-novel HM = HM of the seed means; the 11-dataset average takes the mean of per-dataset Base and "
             "of per-dataset Novel, and its HM is the HM of those two means (not the mean of per-dataset HMs). "
             "A cross-dataset average is the plain mean over the targets (the source left out). An average's std "
             "and interval are over its per-seed averages (seed s: the mean over the datasets, or targets, of seed "
             "s), over the seeds every dataset has. `--compare A,B` gives paired differences with intervals."]
    envs = summary["environments"]
    if summary["base2new"]:
        parts += ["## Base-to-novel: average over datasets", base2new_average_table(summary, reference),
                  environment.markdown_note(envs["base2new"]),
                  "## Base-to-novel: per dataset" + (f" (reference rows {ref.PER_DATASET_SOURCE})" if reference
                                                     else ""),
                  base2new_dataset_table(summary, reference), environment.markdown_note(envs["base2new"])]
    for table in TRANSFER_TABLES:
        if summary[table.key]:
            references = ref.DOMAIN_GENERALIZATION if reference and table.key == "domain_generalization" else {}
            note = {"cross_dataset": " (protocol.md holds no reference numbers for this table)",
                    "domain_generalization": f" (reference rows {ref.DG_SOURCE})"}.get(table.key, "")
            parts += [f"## {table.title}" + (note if reference else ""),
                      transfer_table(summary[table.key], table, references),
                      environment.markdown_note(envs[table.key])]
    parts += ["## Every group", groups_table(summary), environment.markdown_note(envs["groups"])]
    if any(g.get("transductive") for g in summary["groups"]):
        parts.insert(2, TRANSDUCTIVE_NOTE)
    if summary.get("plots"):
        parts += ["## Plots", "\n".join(f"![{p}]({p})" for p in summary["plots"])]
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------------- plots

def _slug(*parts: Any) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9.+-]+", "-", str(p)).strip("-") for p in parts if str(p))


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_base2new_bars(summary: dict[str, Any], path: str) -> None:
    """Grouped bars: Base, Novel and HM per dataset (plus the average), one bar per method."""
    plt = _pyplot()
    systems = summary["base2new"]
    names = sorted({d for s in systems for d in s["datasets"]}, key=_dataset_order) + ["Average"]
    fig, axes = plt.subplots(3, 1, figsize=(max(6.0, 0.9 * len(names) * max(1, len(systems)) ** 0.5), 9),
                             sharex=True)
    for ax, metric, title in zip(axes, ("base", "new", "hm"), ("Base accuracy", "Novel accuracy", "HM")):
        series = {_bar_label(s): [{**s["datasets"], "Average": s["average"]}.get(d, {}).get(metric, np.nan)
                                  for d in names] for s in systems}
        errors = None if metric == "hm" else {
            _bar_label(s): [_interval(s["average"][metric], (s["average"][f"{metric}_per_seed"] or {}).get("ci95"))
                            if d == "Average" else _interval(s["datasets"][d][metric], s["datasets"][d][f"{metric}_ci95"])
                            if d in s["datasets"] else None for d in names] for s in systems}
        _grouped_bars(ax, names, series, f"{title} (%)", errors)
    axes[0].set_title(f"error bars: {ERROR_BARS}; HM (HM of the means) has none", fontsize="small")
    axes[0].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0),   # beside, never over, the bars
                   title="error bars: 95% interval", title_fontsize="small")
    axes[-1].set_xticks(np.arange(len(names)), names, rotation=45, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _interval(mean: float, ci95: Sequence[float] | None) -> tuple[float, float] | None:
    """An error bar (below, above) around `mean`; None without an interval."""
    return None if ci95 is None else (mean - ci95[0], ci95[1] - mean)


def _grouped_bars(ax, names: Sequence[str], series: dict[str, Sequence[float]], ylabel: str,
                  errors: dict[str, Sequence[tuple[float, float] | None]] | None = None) -> None:
    """One group of bars per name, one bar per series (NaN: no bar), with (below, above) error bars if given."""
    width, x = 0.8 / len(series), np.arange(len(names))
    for i, (name, ys) in enumerate(series.items()):
        yerr = None
        if errors is not None:
            bars = [e or (0.0, 0.0) for e in errors[name]]
            yerr = np.array(bars, dtype=float).T
        ax.bar(x + (i - (len(series) - 1) / 2) * width, ys, width, label=name, yerr=yerr, capsize=2,
               error_kw={"elinewidth": 0.8})
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def plot_transfer_bars(rows: list[dict[str, Any]], table: TransferTable, path: str) -> None:
    """Grouped bars: accuracy on the source and on each target (plus their mean), one bar per method."""
    plt = _pyplot()
    names = [table.source, *table.targets, *(["Average"] if table.average else [])]
    series, errors = {}, {}
    for r in rows:
        name = f"{_label(r)} ({r['backbone']}, {r['shots']} shots)"
        series[name] = [r["average"]["accuracy"] if n == "Average" else r["accuracy"].get(n, {}).get("mean", np.nan)
                        for n in names]
        errors[name] = [_interval(r["average"]["accuracy"], r["average"]["per_seed"]["ci95"]) if n == "Average"
                        else _interval(r["accuracy"][n]["mean"], r["accuracy"][n]["ci95"]) if n in r["accuracy"]
                        else None for n in names]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) * max(1, len(rows)) ** 0.5), 4))
    _grouped_bars(ax, names, series, "accuracy (%)", errors)
    ax.set_title(f"{table.title}\n(error bars: {ERROR_BARS})", fontsize="medium")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), title="error bars: 95% interval",
              title_fontsize="small")
    ax.set_xticks(np.arange(len(names)), names, rotation=45, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _bar_label(s: dict[str, Any]) -> str:
    a = s["average"]
    average = "" if a["complete"] else f"; average of {len(a['datasets'])} datasets"
    return f"{_label(s)} ({s['backbone']}, {s['shots']} shots{average})"


def prompt_length_points(groups: list[Group], summary: dict[str, Any]) -> dict[tuple, dict[str, list[tuple]]]:
    """(setting, dataset, backbone, shots) -> method -> [(text, vision, {eval: mean})], complete averages included."""
    points: dict[tuple, dict[str, list[tuple]]] = defaultdict(lambda: defaultdict(list))
    for g in groups:
        k, pl = g.key, g.prompt_length
        values = {e: s.mean for e, s in g.stats.items()} | ({"HM": g.hm} if g.hm is not None else {})
        points[(k.setting, k.dataset, k.backbone, k.shots)][k.method].append((pl["text"], pl["vision"], values))
    lengths = {(g.key.method, g.key.tag, g.key.backbone, g.key.shots): g.prompt_length for g in groups
               if g.key.setting == "base2new"}
    for s in summary["base2new"]:
        if s["average"]["complete"]:
            pl = lengths[(s["method"], s["tag"], s["backbone"], s["shots"])]
            a = s["average"]
            points[("base2new", "average", s["backbone"], s["shots"])][s["method"]].append(
                (pl["text"], pl["vision"], {"base": a["base"], "new": a["new"], "HM": a["hm"]}))
    return {k: v for k, v in points.items() if any(len({p[:2] for p in ps}) > 1 for ps in v.values())}


def plot_prompt_length(where: tuple, by_method: dict[str, list[tuple]], path: str) -> None:
    """Mean accuracy against the number of prompt tokens, one line per method per eval."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    setting, dataset, backbone, shots = where
    fig, ax = plt.subplots(figsize=(6, 4))
    axes_used = set()
    for i, (method, ps) in enumerate(sorted(by_method.items())):
        axis = 0 if len({p[0] for p in ps}) > 1 else 1
        axes_used.add(("text", "vision")[axis])
        ps = sorted(ps, key=lambda p: p[axis])
        for j, e in enumerate(ps[0][2]):
            ax.plot([p[axis] for p in ps], [p[2].get(e, np.nan) for p in ps], marker="o", color=f"C{i % 10}",
                    linestyle=("-", "--", ":", "-.")[j % 4], label=f"{method} {e}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(" / ".join(sorted(axes_used)) + " prompt tokens")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{dataset} ({setting}, {backbone}, {shots} shots)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def mean_history(group: Group) -> list[dict[str, Any]]:
    """The seeds' per-epoch evaluations averaged, over the (phase, epoch) points every seed has."""
    histories = [r.results.get("history") or [] for r in group.runs]
    if not all(histories):
        return []
    keyed = [{(h["phase"], h["epoch"]): h for h in hist} for hist in histories]
    out = []
    for h in histories[0]:
        point = (h["phase"], h["epoch"])
        if all(point in k for k in keyed):
            evals = [e for e in h if e not in _HISTORY_META]
            out.append({"phase": h["phase"], "epoch": h["epoch"],
                        **{e: float(np.mean([k[point][e] for k in keyed])) for e in evals}})
    return out


def history_epochs(hist: list[dict[str, Any]]) -> list[int]:
    """Each evaluation's epoch counted over all phases (a phase's last epoch is always evaluated, so its last entry
    says how many epochs it had)."""
    out, offset = [], 0
    for i, h in enumerate(hist):
        out.append(offset + h["epoch"])
        if i + 1 < len(hist) and hist[i + 1]["phase"] != h["phase"]:
            offset += h["epoch"]
    return out


def plot_history(title: str, histories: dict[str, list[dict[str, Any]]], path: str) -> None:
    """Accuracy of each eval against the epoch (counted over all phases), one panel per dataset."""
    plt = _pyplot()
    n = len(histories)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (dataset, hist) in zip(axes.flat, histories.items()):
        x = history_epochs(hist)
        for e in [k for k in hist[0] if k not in _HISTORY_META]:
            ax.plot(x, [h[e] for h in hist], marker=".", label=e)
        for i in range(1, len(hist)):
            if hist[i]["phase"] != hist[i - 1]["phase"]:
                ax.axvline(x[i - 1] + 0.5, color="grey", linestyle=":")
        ax.set_title(f"{dataset} (phases {' > '.join(dict.fromkeys(h['phase'] for h in hist))})", fontsize="small")
        ax.set_xlabel("epoch (all phases)")
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize="x-small")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(groups: list[Group], summary: dict[str, Any], out_dir: str) -> list[str]:
    """Every PNG this report can draw; returns their file names (relative to `out_dir`)."""
    names = []
    if summary["base2new"]:
        names.append("base2new_bars.png")
        plot_base2new_bars(summary, os.path.join(out_dir, names[-1]))
    for table in TRANSFER_TABLES:
        if summary[table.key]:
            names.append(f"{table.key}_bars.png")
            plot_transfer_bars(summary[table.key], table, os.path.join(out_dir, names[-1]))
    for where, by_method in sorted(prompt_length_points(groups, summary).items()):
        names.append(f"prompt_length_{_slug(*where)}.png")
        plot_prompt_length(where, by_method, os.path.join(out_dir, names[-1]))
    systems: dict[tuple, dict[str, list[dict[str, Any]]]] = defaultdict(dict)
    for g in groups:
        hist = mean_history(g)
        if hist:
            k = g.key
            systems[(k.method, k.tag, k.backbone, k.setting, k.shots, k.transductive)][k.dataset] = hist
    for (method, tag, backbone, setting, shots, transductive), histories in sorted(systems.items()):
        names.append(f"history_{_slug(method, tag, backbone, setting, shots)}.png")
        plot_history(f"{label(method, tag, transductive)}: {setting}, {backbone}, {shots} shots", histories,
                     os.path.join(out_dir, names[-1]))
    return names


# ---------------------------------------------------------------------------------------------------- CLI

def _sources(runs_dir: str | Sequence[str]) -> list[str]:
    return [runs_dir] if isinstance(runs_dir, str) else list(runs_dir)


def report(runs_dir: str | Sequence[str], out_dir: str | None = None, reference: bool = False,
           skip_unfinished: bool = False, plots: bool = True) -> dict[str, Any]:
    """Reads every run below `runs_dir` (or several runs directories and aggregates, their runs together), writes
    results.md, results.json and PNGs to `out_dir` (default: the first); returns the summary."""
    sources = _sources(runs_dir)
    for source in sources:
        if paths.as_path(source).is_file() and (out_dir is None or _same_path(out_dir, _parent(source))):
            raise ReportError(f"a report rebuilt from the aggregate {source} would overwrite it",
                              hint="pass --out with another directory")
    out_dir = out_dir or sources[0]
    groups = group_runs(load_runs(sources, skip_unfinished))
    summary = summarize(sources, groups, reference)
    runs_dir = sources[0]
    paths.make_dirs(out_dir)
    with tempfile.TemporaryDirectory() as scratch:      # matplotlib writes local files; a bucket gets uploads
        local = scratch if paths.is_remote(out_dir) else out_dir
        summary["plots"] = write_plots(groups, summary, local) if plots else []
        summary["per_class"] = write_per_class([r for g in groups for r in g.runs], runs_dir, local, plots)
        if local != out_dir:
            for name in summary["plots"] + summary["per_class"]:
                with open(os.path.join(local, name), "rb") as f:
                    paths.write_bytes_atomic(paths.join(out_dir, name), f.read())
    paths.write_json_atomic(paths.join(out_dir, "results.json"), summary)
    paths.write_text_atomic(paths.join(out_dir, "results.md"), markdown(summary, reference))
    return summary


def _parent(path: str) -> str:
    return str(paths.as_path(path).parent)


def _same_path(a: str, b: str) -> bool:
    return os.path.abspath(a) == os.path.abspath(b) if not paths.is_remote(a) else a.rstrip("/") == b.rstrip("/")


def compare_report(source: str | Sequence[str], pair: str, out_dir: str | None = None,
                   skip_unfinished: bool = False) -> str:
    """`--compare A,B`: the paired differences as Markdown (returned), and compare_A_B.json / .md in `out_dir`
    (default: the (first) runs directory, or the directory of an aggregate results.json)."""
    a, b = compare.parse_pair(pair)
    sources = _sources(source)
    result = compare.compare(group_runs(load_runs(sources, skip_unfinished)), a, b)
    result["source"] = " + ".join(sources)
    md = compare.markdown(result)
    source = sources[0]
    out_dir = out_dir or (_parent(source) if paths.as_path(source).is_file() else source)
    paths.make_dirs(out_dir)
    name = f"compare_{_slug(a)}_{_slug(b)}"
    paths.write_json_atomic(paths.join(out_dir, f"{name}.json"), result)
    paths.write_text_atomic(paths.join(out_dir, f"{name}.md"), md)
    return md + f"\n-> {paths.join(out_dir, name + '.json')}, {paths.join(out_dir, name + '.md')}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aple_jax.report", description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=paths.user_path, nargs="+",
                        help="directory searched recursively for run directories (results.json), or an "
                             "aggregate results.json this command wrote (its per-seed values); several: their runs "
                             "together (e.g. an old study's aggregate and the runs of new methods)")
    parser.add_argument("--out", type=paths.user_path,
                        help="where results.md, results.json and the PNGs go (default: RUNS_DIR)")
    parser.add_argument("--reference", action="store_true", help="add the published rows of protocol.md §6")
    parser.add_argument("--skip-unfinished", action="store_true",
                        help="leave out run directories without results.json instead of failing")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument("--compare", metavar="A,B",
                        help="instead of the report: the paired difference A - B (method or method-tag) per dataset "
                             "and on the average, with 95%% intervals and a verdict; printed, and written as "
                             "compare_A_B.json/.md")
    with error_boundary():
        args = parser.parse_args(argv)
        if args.compare:
            print(compare_report(args.runs_dir, args.compare, args.out, args.skip_unfinished))
            return 0
        summary = report(args.runs_dir, args.out, args.reference, args.skip_unfinished, not args.no_plots)
    out = args.out or args.runs_dir[0]
    print(f"{summary['num_runs']} runs, {len(summary['groups'])} groups -> {os.path.join(out, 'results.md')}, "
          f"{os.path.join(out, 'results.json')}, {len(summary['plots'])} plots")
    for table, envs in summary["environments"].items():
        if envs["mixed"]:
            print(f"warning: the {table} table mixes {len(envs['environments'])} environments (they differ in "
                  f"{', '.join(envs['differing'])}); results.md lists them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
