"""docs/world_studies/intervals.py recomputes the intervals docs/world.md quotes from the studies' per-seed values."""
import json
import os
import re
import subprocess
import sys
from statistics import harmonic_mean

from aple_jax.stats import Stat, paired

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_intervals_quoted_in_world_md():
    out = subprocess.run([sys.executable, "docs/world_studies/intervals.py"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    # each line: the paired mean, sample std and 95% interval over seeds 1-3, then the verdict
    for quoted in ("7 learned methods' mean base - zero-shot: 53.51 - 42.68 = +10.83 ± 0.87, 95% [+8.67, +12.99]",
                   "aple - maple, hm: 50.96 - 48.45 = +2.51 ± 1.34, 95% [-0.82, +5.83] over seeds [1, 2, 3]: "
                   "within noise",
                   "aple - cocoop, DG WorldScenes: 59.93 - 55.66 = +4.27 ± 9.18, 95% [-18.53, +27.07]",
                   "no_stage2 - full, base: 24.27 - 31.63 = -7.36 ± 1.06, 95% [-10.00, -4.72] over seeds [1, 2, 3]: "
                   "full above no_stage2",
                   "xl - large, base: +2.87 ± 5.65, 95% [-0.92, +6.67] over 11 datasets (8 up, 2 down): within noise",
                   "xl - large, new: +0.24 ± 6.75, 95% [-4.30, +4.78] over 11 datasets (6 up, 4 down): within noise"):
        assert quoted in out, quoted
    world_md = " ".join(open(os.path.join(ROOT, "docs", "world.md")).read().split())   # line breaks as spaces
    for quoted in ("10.8 points above zero-shot** (95% interval [8.7, 13.0]", "APLe - MaPLe +2.5 [-0.8, 5.8]",
                   "APLe keeps the most of the others (59.9) and CoCoOp the second most (55.7), but their difference "
                   "is within noise (+4.3 [-18.5, +27.1])", "-7.4 [-10.0, -4.7]",
                   "+2.9 [-0.9, 6.7] (8 datasets up, 2 down) | +0.2 [-4.3, 4.8] (6 up, 4 down)"):
        assert quoted in world_md, quoted


PLUGIN_ROW = re.compile(r"^\| (\w+)\+(DePT|DPC) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| (.+?) \| (.+?) \| (.+?) \|$")
INTERVAL = re.compile(r"^([+-][\d.]+) \[([-\d.]+), ([-\d.]+)\]$")


def _quoted(cell: str, diff: Stat) -> None:
    """`+9.1 [7.4, 10.7]` quotes `diff` to one decimal; `0.0 (equal seed by seed)` says every difference is 0."""
    if cell == "0.0 (equal seed by seed)":
        assert diff.values == [0.0] * diff.n, diff
        return
    mean, low, high = (float(x) for x in INTERVAL.match(cell).groups())
    assert diff.ci95 is not None, diff
    assert (mean, low, high) == tuple(round(x, 1) for x in (diff.mean, *diff.ci95)), (cell, diff)


def test_plugin_rows_in_world_md_are_the_joined_study():
    """Each +DePT / +DPC row of docs/world.md's plug-in table: base, new and HM of the joined b2n results.json, and
    the differences paired by seed with its base method, interval included."""
    with open(os.path.join(ROOT, "docs", "world_studies", "b2n", "results.json")) as f:
        averages = {row["method"]: row["average"] for row in json.load(f)["base2new"] if not row["tag"]}
    rows = [m.groups() for line in open(os.path.join(ROOT, "docs", "world.md")) if (m := PLUGIN_ROW.match(line))]
    assert len(rows) == 8, rows           # DePT and DPC over MaPLe, PromptSRC, APLe and CoOp
    for base_name, plugin, base, new, hm, base_diff, new_diff, hm_diff in rows:
        method, with_plugin = base_name.lower(), f"{base_name}+{plugin}".lower()
        mine, theirs = averages[with_plugin], averages[method]
        assert (float(base), float(new), float(hm)) == tuple(round(mine[k], 2) for k in ("base", "new", "hm"))
        per_seed = {name: {k: dict(zip(avg["seeds"], avg[f"{k}_per_seed"]["values"])) for k in ("base", "new")}
                    for name, avg in (("mine", mine), ("theirs", theirs))}
        hm_of = {name: {s: harmonic_mean([v["base"][s], v["new"][s]]) for s in v["base"]}
                 for name, v in per_seed.items()}
        _quoted(base_diff, paired(per_seed["mine"]["base"], per_seed["theirs"]["base"])[0])
        _quoted(new_diff, paired(per_seed["mine"]["new"], per_seed["theirs"]["new"])[0])
        _quoted(hm_diff, paired(hm_of["mine"], hm_of["theirs"])[0])
