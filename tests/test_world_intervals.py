"""docs/world_studies/intervals.py recomputes the intervals docs/world.md quotes from the studies' per-seed values."""
import os
import subprocess
import sys

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
                   "full above no_stage2"):
        assert quoted in out, quoted
    world_md = " ".join(open(os.path.join(ROOT, "docs", "world.md")).read().split())   # line breaks as spaces
    for quoted in ("10.8 points above zero-shot** (95% interval [8.7, 13.0]", "APLe - MaPLe +2.5 [-0.8, 5.8]",
                   "APLe keeps the most of the others (59.9) and CoCoOp the second most (55.7), but their difference "
                   "is within noise (+4.3 [-18.5, +27.1])", "-7.4 [-10.0, -4.7]"):
        assert quoted in world_md, quoted
