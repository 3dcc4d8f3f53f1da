"""`python -m aple_jax.report RUNS --compare A,B`: paired differences against a hand computation, verdicts, pairing
over shared seeds only, unknown names, and an aggregate results.json as input."""
import json
import math
import statistics

import pytest

from aple_jax import compare
from aple_jax import report as R
from aple_jax.errors import ReportError
from aple_jax.reporting.groups import group_runs
from aple_jax.reporting.runs import find_runs, load_runs
from aple_jax.run import hm
from tests.test_report import write_run

T2 = 4.302652730          # t(0.975) with 2 degrees of freedom (tests/test_stats.py checks it)
BASE = {("OxfordPets", "aple"): (90.0, 92.0, 91.0), ("OxfordPets", "maple"): (88.0, 89.5, 88.0),
        ("DTD", "aple"): (60.0, 61.0, 65.0), ("DTD", "maple"): (61.0, 60.0, 66.0)}
NEW = {("OxfordPets", "aple"): (80.0, 81.0, 79.0), ("OxfordPets", "maple"): (80.0, 82.0, 78.0),
       ("DTD", "aple"): (40.0, 42.0, 44.0), ("DTD", "maple"): (30.0, 32.0, 33.0)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for (dataset, method), bases in BASE.items():
        for i, seed in enumerate((1, 2, 3)):
            accuracy = {"base": bases[i], "new": NEW[(dataset, method)][i]}
            write_run(root, method, dataset, seed, accuracy)
            write_run(root, method, dataset, seed, accuracy, tag="copy")   # the same numbers under another name
    return root


def _rows(result):
    return {(r["dataset"], r["metric"]): r for r in result["rows"]}


def _interval(diffs):
    mean, half = statistics.mean(diffs), T2 * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, [mean - half, mean + half]


def test_paired_interval_matches_a_hand_computation(runs):
    result = compare.compare(group_runs(find_runs(str(runs))), "aple", "maple")
    rows = _rows(result)
    pets = rows[("OxfordPets", "base")]                             # differences 2.0, 2.5, 3.0
    mean, ci = _interval([2.0, 2.5, 3.0])
    assert pets["difference"]["mean"] == pytest.approx(mean) and pets["difference"]["ci95"] == pytest.approx(ci)
    assert pets["seeds"] == [1, 2, 3] and pets["verdict"] == "aple above maple"
    assert ci == pytest.approx([2.5 - 4.302652730 * 0.5 / math.sqrt(3), 2.5 + 4.302652730 * 0.5 / math.sqrt(3)])
    assert rows[("DTD", "new")]["verdict"] == "aple above maple"     # 10, 10, 11
    assert rows[("DTD", "base")]["verdict"] == "within noise"        # -1, 1, -1
    # HM per seed: HM of that seed's base and new
    hms = [hm(b, n) - hm(b2, n2) for b, n, b2, n2 in zip(BASE[("DTD", "aple")], NEW[("DTD", "aple")],
                                                              BASE[("DTD", "maple")], NEW[("DTD", "maple")])]
    assert rows[("DTD", "hm")]["difference"]["values"] == pytest.approx(hms)
    # the average: per seed, the mean over the two datasets of aple minus that of maple
    per_seed = [(BASE[("OxfordPets", "aple")][i] + BASE[("DTD", "aple")][i]) / 2
                - (BASE[("OxfordPets", "maple")][i] + BASE[("DTD", "maple")][i]) / 2 for i in range(3)]
    avg = rows[(compare.AVERAGE, "base")]
    assert avg["difference"]["values"] == pytest.approx(per_seed) and avg["datasets"] == 2
    assert avg["difference"]["ci95"] == pytest.approx(_interval(per_seed)[1])
    a_base = [(BASE[("OxfordPets", "aple")][i] + BASE[("DTD", "aple")][i]) / 2 for i in range(3)]
    a_new = [(NEW[("OxfordPets", "aple")][i] + NEW[("DTD", "aple")][i]) / 2 for i in range(3)]
    assert rows[(compare.AVERAGE, "hm")]["a_mean"] == pytest.approx(statistics.mean(map(hm, a_base, a_new)))


def test_identical_runs_are_within_noise_and_the_verdict_follows_the_order(runs):
    groups = group_runs(find_runs(str(runs)))
    same = compare.compare(groups, "aple", "aple-copy")
    assert {r["verdict"] for r in same["rows"]} == {"within noise"}
    assert all(r["difference"]["ci95"] == [0.0, 0.0] for r in same["rows"])
    flipped = _rows(compare.compare(groups, "maple", "aple"))
    assert flipped[("OxfordPets", "base")]["verdict"] == "aple above maple"
    assert flipped[("OxfordPets", "base")]["difference"]["mean"] == pytest.approx(-2.5)


def test_only_pairs_present_in_both_count(tmp_path):
    for seed in (1, 2, 3):
        write_run(tmp_path, "aple", "OxfordPets", seed, {"base": 90.0 + seed, "new": 80.0})
        write_run(tmp_path, "aple", "DTD", seed, {"base": 60.0 + seed, "new": 40.0})
        write_run(tmp_path, "maple", "OxfordPets", seed, {"base": 80.0, "new": 80.0 + seed})
        if seed < 3:
            write_run(tmp_path, "maple", "DTD", seed, {"base": 50.0, "new": 40.0})
    rows = _rows(compare.compare(group_runs(find_runs(str(tmp_path))), "aple", "maple"))
    assert rows[("OxfordPets", "base")]["seeds"] == [1, 2, 3] and rows[("DTD", "base")]["seeds"] == [1, 2]
    avg = rows[(compare.AVERAGE, "base")]
    assert avg["seeds"] == [1, 2] and avg["difference"]["values"] == pytest.approx([10.5 + 0.5, 11.5 + 0.5])


def test_cli_prints_a_table_writes_json_and_names_unknown_methods(runs, tmp_path, capsys):
    assert R.main([str(runs), "--compare", "aple,maple", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| base2new | ViT-B/16 | 16 | OxfordPets | base | 91.00 | 88.50 | +2.50 | [+1.26, +3.74] | 3 seeds | aple above maple |" in out
    assert "| 3 seeds x 2 datasets |" in out and "95% interval" in out
    saved = json.loads((tmp_path / "compare_aple_maple.json").read_text())
    assert saved["kind"] == compare.COMPARE_KIND and len(saved["rows"]) == 2 * 3 + 3
    assert (tmp_path / "compare_aple_maple.md").read_text().startswith("## aple − maple")
    with pytest.raises(SystemExit) as e:
        R.main([str(runs), "--compare", "aple,coop"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert err[0] == ("error: --compare aple,coop: no runs of 'coop'; the methods present (method or method-tag): "
                      "aple, aple-copy, maple, maple-copy")
    with pytest.raises(SystemExit):
        R.main([str(runs), "--compare", "aple"])
    assert "expected two different names A,B" in capsys.readouterr().err


def test_an_aggregate_results_json_compares_like_its_runs(runs, tmp_path, capsys):
    """The world studies keep only their aggregate: its per-seed values rebuild the runs, seeds and run names."""
    R.report(str(runs), str(tmp_path / "agg"), plots=False)
    aggregate = tmp_path / "agg" / "results.json"
    from_runs = compare.compare(group_runs(find_runs(str(runs))), "aple", "maple")
    from_aggregate = compare.compare(group_runs(load_runs(str(aggregate))), "aple", "maple")
    assert from_aggregate["rows"] == from_runs["rows"]
    assert from_aggregate["environments"]["not_recorded"][0].endswith("aple/base2new/DTD/shots_16/seed1")
    assert R.main([str(aggregate), "--compare", "aple,maple"]) == 0      # written beside the aggregate
    assert (tmp_path / "agg" / "compare_aple_maple.json").exists()
    # a full report from an aggregate needs another --out than the aggregate's own directory
    with pytest.raises(ReportError, match="would overwrite it"):
        R.report(str(aggregate), str(tmp_path / "agg"))
    summary = R.report(str(aggregate), str(tmp_path / "again"), plots=False)
    assert summary["base2new"][0]["datasets"]["OxfordPets"]["base_ci95"] is not None
    broken = json.loads(aggregate.read_text())
    broken["groups"][0]["accuracy"]["base"]["values"].pop()
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ReportError, match=r"groups\[0\] \(aple on DTD\) has 2 values for 'base' but 3 seeds"):
        load_runs(str(tmp_path / "broken.json"))
    (tmp_path / "other.json").write_text(json.dumps({"method": "aple"}))
    with pytest.raises(ReportError, match="not an aggregate"):
        load_runs(str(tmp_path / "other.json"))


def test_transfer_average_leaves_the_source_out(tmp_path):
    targets = ("ImageNet", "Caltech101", "OxfordPets")
    for seed in (1, 2, 3):
        for method, bump, source_bump in (("aple", 2.0, -5.0), ("maple", 0.0, 0.0)):
            accuracy = {t: 50.0 + i + seed + (bump if t != "ImageNet" else source_bump) for i, t in enumerate(targets)}
            write_run(tmp_path, method, "ImageNet", seed, accuracy, setting="transfer", eval_datasets=targets)
    rows = _rows(compare.compare(group_runs(find_runs(str(tmp_path))), "aple", "maple"))
    assert rows[("ImageNet", "accuracy")]["difference"]["mean"] == pytest.approx(-5.0)
    avg = rows[(compare.AVERAGE, "accuracy")]
    assert avg["datasets"] == 2 and avg["difference"]["values"] == pytest.approx([2.0, 2.0, 2.0])
    assert avg["source"] == "ImageNet" and avg["verdict"] == "aple above maple"     # no spread: [2, 2]
    md = compare.markdown(compare.compare(group_runs(find_runs(str(tmp_path))), "aple", "maple"))
    assert "| transfer | ViT-B/16 | 16 | ImageNet → Caltech101 | accuracy |" in md
    assert "| ImageNet → Average | accuracy | 55.50 | 53.50 | +2.00 | [+2.00, +2.00] | 3 seeds x 2 targets |" in md
