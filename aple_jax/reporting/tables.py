"""Markdown: one run's table (`format_run`), and results.md from the aggregate (aple_jax/reporting/summary.py)."""
from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from typing import Any, Iterable, Sequence

from aple_jax import compare, environment, stats
from aple_jax import reference_numbers as ref
from aple_jax.reporting.summary import TRANSFER_TABLES, TransferTable, dataset_order, label, system_label
from aple_jax.run import hm

TRANSDUCTIVE_NOTE = (f"Rows marked {compare.TRANSDUCTIVE} trained on unlabeled images of the classes they are "
                     "tested on (PromptKD: the training images of base and new classes); they are not comparable with "
                     "the other, inductive rows.")


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
        rows.append([system_label(s), s["backbone"], s["shots"], n, _seeds(a["seeds"]),
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
            by_dataset[d].append([d, system_label(s), s["backbone"], s["shots"], _seeds(v["seeds"]),
                                  *cells, f"{v['hm']:.2f}"])
    for d in by_dataset:
        if reference:
            by_dataset[d] += [[d, f"{m} (reference)", "ViT-B/16", 16, "–", f"{b:.2f}", f"{n:.2f}", f"{h:.2f}"]
                              for m, table in ref.BASE2NEW_PER_DATASET.items() if d in table
                              for b, n, h in [table[d]]]
    rows = [row for d in sorted(by_dataset, key=dataset_order) for row in by_dataset[d]]
    return _table(["Dataset", "Method", "Backbone", "Shots", "Seeds", "Base", "Novel", "HM"], rows)


def transfer_table(rows_in: list[dict[str, Any]], table: TransferTable,
                   references: dict[str, dict[str, float]]) -> str:
    columns, average = [table.source, *table.targets], table.average
    rows = []
    for s in rows_in:
        acc = s["accuracy"]
        cells = [_cell(acc[t]) if t in acc else "–" for t in columns]
        row = [system_label(s), s["backbone"], s["shots"], _seeds(s["seeds"]), *cells]
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
        rows.append([system_label(g), g["backbone"], g["setting"], g["shots"], g["dataset"],
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
