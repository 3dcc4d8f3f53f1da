"""Every comparison docs/world.md draws from the studies, recomputed from the per-seed values kept in
docs/world_studies/*/results.json: the paired difference over seeds (per seed, the mean over the datasets named),
its sample std and 95% Student-t interval, and the verdict of `python -m aple_jax.report --compare`.

    python docs/world_studies/intervals.py          # prints one line per comparison, as docs/world.md quotes them

Pairs of one study are the ones `python -m aple_jax.report docs/world_studies/<study>/results.json --compare A,B`
gives on its Average rows; this script adds averages over a subset of datasets, means over several methods and
pairs across two studies (the ablation's variants against the suite run's APLe).
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Iterable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from aple_jax.stats import Stat, paired, verdict  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
LEARNED = ("coop", "cocoop", "kgcoop", "maple", "ivlp", "promptsrc", "aple")
SPECIALIST = ("WorldCounts-Dim", "WorldCounts-Tint", "WorldSizes-Dim", "WorldSizes-Tint", "WorldScenes-Dim",
              "WorldScenes-Tint")
XD_TARGETS = tuple(f"{f}-Tint" for f in ("WorldObjects", "WorldCounts", "WorldSizes", "WorldPlaces", "WorldShapes",
                                         "WorldTextures"))
Table = dict[tuple[str, str, str], dict[int, float]]   # (system, dataset, metric) -> {seed: accuracy}


def load(study: str) -> Table:
    """(system, dataset, metric) -> {seed: accuracy}; system is `method` or `method-tag`; metric base or new, or in
    the transfer study top1 with the evaluated dataset as the dataset."""
    with open(os.path.join(HERE, study, "results.json")) as f:
        groups = json.load(f)["groups"]
    out: Table = {}
    for g in groups:
        system = g["method"] + (f"-{g['tag']}" if g["tag"] else "")
        per_seed = {e: dict(zip(g["seeds"], acc["values"])) for e, acc in g["accuracy"].items()}
        if g["setting"] == "transfer":   # one top-1 per evaluated dataset
            out.update({(system, e, "top1"): v for e, v in per_seed.items()})
            continue
        out.update({(system, g["dataset"], e): v for e, v in per_seed.items()})
    return out


def average(table: Table, systems: Iterable[str], metric: str, datasets: Iterable[str] | None = None) -> dict[int, float]:
    """Per seed, the mean over `datasets` (default: all the first system has) and over `systems`; for "hm", the HM
    of those means of base and new (as the report's Average row)."""
    systems = list(systems)
    if metric == "hm":
        b, n = average(table, systems, "base", datasets), average(table, systems, "new", datasets)
        return {s: 2 * b[s] * n[s] / (b[s] + n[s]) if b[s] + n[s] else 0.0 for s in b}
    names = sorted(datasets or {d for (s, d, m) in table if s == systems[0] and m == metric})
    rows = [table[(s, d, metric)] for s in systems for d in names]
    seeds = sorted(set.intersection(*(set(r) for r in rows)))
    return {seed: math.fsum(r[seed] for r in rows) / len(rows) for seed in seeds}


def line(label: str, a: dict[int, float], b: dict[int, float], names: tuple[str, str] = ("A", "B")) -> None:
    diff, seeds = paired(a, b)
    lo, hi = diff.ci95
    print(f"- {label}: {Stat.of([a[s] for s in seeds]).mean:.2f} - {Stat.of([b[s] for s in seeds]).mean:.2f} = "
          f"{diff.mean:+.2f} ± {diff.std:.2f}, 95% [{lo:+.2f}, {hi:+.2f}] over seeds {seeds}: "
          f"{verdict(diff.ci95, *names)}")


def b2n(study: str, title: str) -> None:
    t = load(study)
    print(f"\n{title} ({study}), mean over the 11 datasets")
    zs = {m: average(t, ["zeroshot"], m) for m in ("base", "new", "hm")}
    line("7 learned methods' mean base - zero-shot", average(t, LEARNED, "base"), zs["base"],
         ("learned", "zero-shot"))
    if study == "b2n_suite1":
        return
    for method in LEARNED:
        for m in ("base", "new", "hm"):
            line(f"{method} - zero-shot, {m}", average(t, [method], m), zs[m], (method, "zero-shot"))
    order = ("promptsrc", "ivlp", "aple", "maple", "cocoop", "coop", "kgcoop")
    for a, b in zip(order, order[1:]):
        line(f"{a} - {b}, hm", average(t, [a], "hm"), average(t, [b], "hm"), (a, b))
    for a, b in (("aple", "maple"), ("ivlp", "maple"), ("promptsrc", "maple")):
        line(f"{a} - {b}, base", average(t, [a], "base"), average(t, [b], "base"), (a, b))
    line("image-tower three - text-side four, base", average(t, ("ivlp", "promptsrc", "aple"), "base"),
         average(t, ("coop", "cocoop", "kgcoop", "maple"), "base"), ("image-tower", "others"))


def factors() -> None:
    full, six = load("b2n"), load("b2n_06")
    print("\nfactor 1.0 against 0.6, base, mean over the 11 datasets (same seeds and few-shot samples)")
    for method in LEARNED:
        line(f"{method} 1.0 - 0.6", average(full, [method], "base"), average(six, [method], "base"), ("1.0", "0.6"))
    line("coop 1.0 - 0.6, new", average(full, ["coop"], "new"), average(six, ["coop"], "new"), ("1.0", "0.6"))


def transfer() -> None:
    t = load("transfer")
    print("\ntransfer from WorldScenes-Tint (transfer), top-1")
    zs_xd = average(t, ["zeroshot"], "top1", XD_TARGETS)
    for method in LEARNED:
        line(f"{method} - zero-shot, xd mean of 6", average(t, [method], "top1", XD_TARGETS), zs_xd,
             (method, "zero-shot"))
    for method in LEARNED:
        line(f"{method} - zero-shot, source", average(t, [method], "top1", ["WorldScenes-Tint"]),
             average(t, ["zeroshot"], "top1", ["WorldScenes-Tint"]), (method, "zero-shot"))
    clean = lambda s: average(t, [s], "top1", ["WorldScenes"])
    line("aple - cocoop, DG WorldScenes", clean("aple"), clean("cocoop"), ("aple", "cocoop"))
    for method in LEARNED:
        line(f"{method} - zero-shot, DG WorldScenes", clean(method), clean("zeroshot"), (method, "zero-shot"))


def length() -> None:
    t = load("length")
    print("\nprompt length (length), WorldScenes-Tint")
    one = lambda s, m, d="WorldScenes-Tint": average(t, [s], m, [d])
    line("coop ctx16 - ctx8, base", one("coop-ctx16", "base"), one("coop-ctx8", "base"), ("16", "8"))
    line("coop ctx16 - ctx4, new", one("coop-ctx16", "new"), one("coop-ctx4", "new"), ("16", "4"))
    line("ivlp ctx4 - ctx16, base", one("ivlp-ctx4", "base"), one("ivlp-ctx16", "base"), ("4", "16"))
    line("ivlp ctx2 - ctx8, base", one("ivlp-ctx2", "base"), one("ivlp-ctx8", "base"), ("2", "8"))
    line("aple ctx16 - ctx2, base", one("aple-ctx16", "base"), one("aple-ctx2", "base"), ("16", "2"))
    line("aple ctx2 - ctx1, base", one("aple-ctx2", "base"), one("aple-ctx1", "base"), ("2", "1"))
    line("coop ctx8 - ctx16, WorldCounts-Tint base", one("coop-ctx8", "base", "WorldCounts-Tint"),
         one("coop-ctx16", "base", "WorldCounts-Tint"), ("8", "16"))


def ablation() -> None:
    variants, full = load("ablation"), load("b2n_04")
    print("\nAPLe ablation (ablation) against the suite run's APLe at 0.4 (b2n_04), mean over the six specialists")
    for tag in ("no_adapter", "no_kl", "no_stage2", "order_VL", "per_token"):
        for m in ("base", "new"):
            line(f"{tag} - full, {m}", average(variants, [f"aple-{tag}"], m, SPECIALIST),
                 average(full, ["aple"], m, SPECIALIST), (tag, "full"))


def ablation_suite1() -> None:
    t = load("ablation_suite1")
    print("\nAPLe ablation, first suite (ablation_suite1), mean over its four datasets")
    for tag in ("no_kl", "per_token", "no_stage2", "no_adapter", "order_VL"):
        for m in ("base", "new"):
            line(f"{tag} - full, {m}", average(t, [f"aple-{tag}"], m), average(t, ["aple"], m), (tag, "full"))


def teachers() -> None:
    """One seed each, so paired over the datasets: PromptSRC's teachers on world-xl against the world study's on
    world-large."""
    xl, large = load("xl_teachers"), load("b2n")
    print("\nPromptSRC teachers, world-xl (xl_teachers) - world-large (b2n, tag teacher), seed 1, over the 11 datasets")
    for m in ("base", "new"):
        pairs = {d: (v[1], large[("promptsrc-teacher", d, m)][1]) for (s, d, mm), v in xl.items() if mm == m}
        diff = Stat.of([a - b for a, b in pairs.values()])
        up, down = sum(a > b for a, b in pairs.values()), sum(a < b for a, b in pairs.values())
        print(f"- xl - large, {m}: {diff.mean:+.2f} ± {diff.std:.2f}, 95% [{diff.ci95[0]:+.2f}, {diff.ci95[1]:+.2f}] "
              f"over {diff.n} datasets ({up} up, {down} down): {verdict(diff.ci95, 'xl', 'large')}")


def main() -> None:
    b2n("b2n", "base-to-novel, factor 1.0")
    b2n("b2n_06", "base-to-novel, factor 0.6")
    b2n("b2n_04", "base-to-novel, factor 0.4")
    factors()
    transfer()
    length()
    ablation()
    b2n("b2n_suite1", "base-to-novel, first suite, factor 0.2")
    ablation_suite1()
    teachers()


if __name__ == "__main__":
    main()
