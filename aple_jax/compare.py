"""`python -m aple_jax.report RUNS --compare A,B`: the paired difference A - B per dataset and on the average, with
its 95% interval over seeds and a plain verdict.

A and B are `method` or `method-tag` (as the sweep names run directories). Each row pairs the two systems' runs on
the same dataset (transfer: target) and seed, in the same setting, backbone and shots; only pairs present in both
count. Base-to-novel rows give base, new and HM (per seed, the HM of that seed's base and new); other settings give
the accuracy. An average row pairs, per seed, the mean over the datasets both have (transfer: over the targets, the
source left out) of A and of B, over the seeds every such dataset has; its HM is, per seed, the HM of the averaged
base and new. The interval is the paired Student-t 95% interval of the mean difference; the verdict is "A above B"
when it lies above 0, "B above A" below it, "within noise" when it contains 0.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Iterable

from aple_jax import environment, stats
from aple_jax.errors import ReportError
from aple_jax.run import hm

if TYPE_CHECKING:
    from aple_jax.reporting.groups import Group

COMPARE_KIND = "aple_jax.compare"
TRANSDUCTIVE = "(transductive)"   # as aple_jax.reporting marks such rows
AVERAGE = "Average"


def system_name(method: str, tag: str) -> str:
    """A system's name on the command line: `method`, or `method-tag` for a tagged variant."""
    return f"{method}-{tag}" if tag else method


def parse_pair(arg: str) -> tuple[str, str]:
    names = [n.strip() for n in arg.split(",")]
    if len(names) != 2 or not all(names) or names[0] == names[1]:
        raise ReportError(f"--compare {arg!r}; expected two different names A,B (method or method-tag), e.g. "
                          f"--compare aple,maple")
    return names[0], names[1]


Block = tuple[str, str, int, tuple[str, ...], str]     # setting, backbone, shots; transfer: evals, source
Unit = tuple[str, str]                                 # dataset (transfer: target), metric


def per_seed_values(groups: Iterable[Group]) -> dict[Block, dict[Unit, dict[int, float]]]:
    """One system's accuracies per block, (dataset, metric) and seed."""
    out: dict[Block, dict[Unit, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for g in groups:
        k = g.key
        transfer = k.setting == "transfer"
        block = (k.setting, k.backbone, k.shots, k.evals if transfer else (), k.dataset if transfer else "")
        for run in g.runs:
            seed, acc = run.results["seed"], run.accuracy
            if k.setting == "base2new":
                for metric, value in (("base", acc["base"]), ("new", acc["new"]),
                                      ("hm", hm(acc["base"], acc["new"]))):
                    out[block][(k.dataset, metric)][seed] = value
            else:
                for e, value in acc.items():
                    out[block][(e if transfer else k.dataset, "accuracy")][seed] = value
    return out


def _row(block: Block, dataset: str, metric: str, a: dict[int, float], b: dict[int, float], names: tuple[str, str],
         datasets: int = 1) -> dict[str, Any] | None:
    pair = stats.paired(a, b)
    if pair is None:
        return None
    diff, seeds = pair
    setting, backbone, shots, _, source = block
    return {"setting": setting, "backbone": backbone, "shots": shots, "source": source, "dataset": dataset,
            "metric": metric,
            "a_mean": stats.Stat.of([a[s] for s in seeds]).mean, "b_mean": stats.Stat.of([b[s] for s in seeds]).mean,
            "difference": dataclasses.asdict(diff), "seeds": seeds, "datasets": datasets,
            "verdict": stats.verdict(diff.ci95, *names)}


def _averages(block: Block, a: dict[Unit, dict[int, float]], b: dict[Unit, dict[int, float]],
              names: tuple[str, str]) -> list[dict[str, Any]]:
    """The average rows of one block: per metric, per seed the mean over the datasets both systems have."""
    setting, source = block[0], block[4]
    metrics = ("base", "new") if setting == "base2new" else ("accuracy",)
    averaged: dict[str, tuple[dict[int, float], dict[int, float], int]] = {}
    for metric in metrics:
        units = [u for u in a if u in b and u[1] == metric and u[0] != source]
        common = {u: sorted(set(a[u]) & set(b[u])) for u in units}
        if len(units) < 2:
            continue
        avg_a = stats.per_seed_average({u: {s: a[u][s] for s in common[u]} for u in units})
        avg_b = stats.per_seed_average({u: {s: b[u][s] for s in common[u]} for u in units})
        averaged[metric] = (avg_a, avg_b, len(units))
    if setting == "base2new" and {"base", "new"} <= set(averaged):
        (ba, bb, n), (na, nb, _) = averaged["base"], averaged["new"]
        seeds = sorted(set(ba) & set(na))
        averaged["hm"] = ({s: hm(ba[s], na[s]) for s in seeds}, {s: hm(bb[s], nb[s]) for s in seeds}, n)
    rows = [_row(block, AVERAGE, metric, va, vb, names, n) for metric, (va, vb, n) in averaged.items()]
    return [r for r in rows if r is not None]


def compare(groups: list[Group], a: str, b: str) -> dict[str, Any]:
    """The paired comparison of systems `a` and `b` over the grouped runs (see the module docstring)."""
    present = sorted({system_name(g.key.method, g.key.tag) for g in groups})
    unknown = [n for n in (a, b) if n not in present]
    if unknown:
        raise ReportError(f"--compare {a},{b}: no runs of {', '.join(map(repr, unknown))}; the methods present "
                          f"(method or method-tag): {', '.join(present)}")
    chosen = {n: [g for g in groups if system_name(g.key.method, g.key.tag) == n] for n in (a, b)}
    va, vb = per_seed_values(chosen[a]), per_seed_values(chosen[b])
    envs = environment.summarize((r.name, r.results) for n in (a, b) for g in chosen[n] for r in g.runs)
    # a transductive system is named with its mark in every row and verdict
    a, b = (f"{n} {TRANSDUCTIVE}" if any(g.key.transductive for g in chosen[n]) else n for n in (a, b))
    rows = []
    for block in sorted(set(va) & set(vb)):
        units = sorted(set(va[block]) & set(vb[block]), key=lambda u: (u[0], ("base", "new", "hm").index(u[1])
                                                                      if u[1] in ("base", "new", "hm") else 0))
        rows += [r for u in units if (r := _row(block, *u, va[block][u], vb[block][u], (a, b))) is not None]
        rows += _averages(block, va[block], vb[block], (a, b))
    if not rows:
        raise ReportError(f"--compare {a},{b}: no dataset and seed have runs of both (same setting, backbone and "
                          f"shots)")
    return {"kind": COMPARE_KIND, "a": a, "b": b, "rows": rows, "environments": envs}


def markdown(result: dict[str, Any]) -> str:
    a, b = result["a"], result["b"]
    header = ["Setting", "Backbone", "Shots", "Dataset", "Metric", a, b, f"{a} − {b}", "95% interval", "Pairs",
              "Verdict"]
    lines = [f"## {a} − {b}: paired differences over seeds", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in result["rows"]:
        d = r["difference"]
        interval = "–" if d["ci95"] is None else f"[{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
        units = "targets" if r["source"] else "datasets"
        pairs = f"{len(r['seeds'])} seeds" + (f" x {r['datasets']} {units}" if r["dataset"] == AVERAGE else "")
        dataset = f"{r['source']} → {r['dataset']}" if r["source"] else r["dataset"]
        cells = [r["setting"], r["backbone"], r["shots"], dataset, r["metric"], f"{r['a_mean']:.2f}",
                 f"{r['b_mean']:.2f}", f"{d['mean']:+.2f}", interval, pairs, r["verdict"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", f"Differences {a} − {b} paired by seed over the seeds both have (Pairs). Interval: the paired "
                  f"Student-t 95% interval of the mean difference (n-1 degrees of freedom). {AVERAGE}: per seed, the "
                  f"mean over the datasets both have (transfer: targets, source left out), over the seeds every "
                  f"such dataset has; HM: per seed, the HM of base and new (of the averaged base and new on "
                  f"{AVERAGE}). Verdict: '{a} above {b}' when the interval lies above 0, '{b} above {a}' below it, "
                  f"'within noise' when it contains 0.", "", environment.markdown_note(result["environments"])]
    return "\n".join(lines) + "\n"
