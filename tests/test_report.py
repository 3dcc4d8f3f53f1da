"""report.py over hand-written run directories: seed means and stds, HM of means, the 11-dataset rule, transfer
tables, PNGs, and the errors for unfinished, incompatible or missing runs."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from aple_jax import reference_numbers as ref
from aple_jax import report as R
from aple_jax.errors import ReportError
from aple_jax.reporting.groups import group_runs
from aple_jax.reporting.plots import history_epochs, mean_history, plot_base2new_bars
from aple_jax.reporting.runs import REPORT_KIND, find_runs
from aple_jax.reporting.summary import BASE2NEW_DATASETS, _world_names, base2new_average, dataset_order
from aple_jax.reporting.tables import format_run
from configs.common import WORLD_DG_TARGETS, WORLD_XD_TARGETS

DATASETS = BASE2NEW_DATASETS
SEEDS = (1, 2, 3)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def hm(b: float, n: float) -> float:
    return 2 * b * n / (b + n)


def accuracies(method: str, dataset: str, seed: int) -> tuple[float, float]:
    """Fixture numbers with very different base/novel gaps per dataset (so the mean of HMs != HM of means)."""
    if dataset == "OxfordPets" and method == "aple":   # hand-computed in test_per_dataset_stats
        return {1: (95.0, 97.5), 2: (96.0, 97.0), 3: (97.0, 96.5)}[seed]
    i = DATASETS.index(dataset)
    bump = 1.5 if method == "maple" else 0.0
    return 90.0 - 4 * i + bump + 0.5 * seed, 40.0 + 5 * i - bump - 0.25 * seed


def write_run(root: Path, method: str, dataset: str, seed: int, accuracy: dict[str, float], *,
              setting: str = "base2new", tag: str = "", backbone: str = "ViT-B/16", shots: int = 16,
              n_ctx: int = 4, lr: float = 0.0025, history: list | None = None, result_name: str | None = None,
              eval_datasets: tuple[str, ...] = (), environment: dict | None = None) -> Path:
    path = root / (method + (f"-{tag}" if tag else "")) / setting / dataset / f"shots_{shots}" / f"seed{seed}"
    path.mkdir(parents=True)
    config = {"method": method, "tag": tag, "seed": seed, "setting": setting,
              "dataset": {"name": dataset, "root": f"/mnt{seed}/data", "shots": shots, "num_workers": seed,
                          "eval_datasets": list(eval_datasets)},
              "backbone": {"name": backbone, "weights": f"/mnt{seed}/w"},
              "prompts": {"text": {"n_ctx": n_ctx}, "vision": {"n_ctx": n_ctx}},
              "optim": {"lr": lr}, "log_every": 10 * seed}    # paths and operational keys differ across seeds
    results = {"method": method, "dataset": result_name or dataset, "setting": setting, "seed": seed,
               "shots": shots, "backbone": backbone, "tag": tag, "prompt_length": {"text": n_ctx, "vision": n_ctx},
               "evals": {k: {"accuracy": v, "per_class_accuracy": [], "num_examples": 10}
                         for k, v in accuracy.items()},
               "accuracy": accuracy, "history": history or [], "compilations": {}, "seconds": 1.0,
               "num_devices": 1, "config": config}
    if environment is not None:
        results["environment"] = environment
    if "base" in accuracy:
        results["hm"] = hm(accuracy["base"], accuracy["new"])
    (path / "config.json").write_text(json.dumps(config))
    (path / "results.json").write_text(json.dumps(results))
    return path


def history(seed: int) -> list[dict]:
    return [{"phase": p, "epoch": e, "step": 10 * k, "base": 50.0 + k + seed, "new": 40.0 + k - seed}
            for k, (p, e) in enumerate([("LV", 1), ("LV", 2), ("Stage2", 1), ("Stage2", 2)])]


XD_TARGETS = ("ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "Flowers102", "Food101", "FGVCAircraft",
              "SUN397", "DTD", "EuroSAT", "UCF101")
DG_TARGETS = ("ImageNet", "ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")


def xd_accuracy(target: str, seed: int) -> float:
    return 60.0 + 2 * XD_TARGETS.index(target) + seed


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """aple and maple: 11 datasets x 3 seeds; aple [ctx8]: 5 datasets; maple cross-dataset and DG transfer."""
    root = tmp_path_factory.mktemp("runs")
    for method in ("aple", "maple"):
        for d in DATASETS:
            for s in SEEDS:
                b, n = accuracies(method, d, s)
                write_run(root, method, d, s, {"base": b, "new": n},
                          history=history(s) if method == "aple" and d == "OxfordPets" else None,
                          result_name="DescribableTextures" if d == "DTD" else None)
    for d in DATASETS[:5]:
        for s in SEEDS:
            b, n = accuracies("aple", d, s)
            write_run(root, "aple", d, s, {"base": b + 1, "new": n + 2}, tag="ctx8", n_ctx=8)
    for s in SEEDS:
        # same method and tag, different target lists: two groups, not a conflict
        write_run(root / "xd", "maple", "ImageNet", s, {t: xd_accuracy(t, s) for t in XD_TARGETS},
                  setting="transfer", eval_datasets=XD_TARGETS)
        write_run(root / "dg", "maple", "ImageNet", s, {t: 50.0 + DG_TARGETS.index(t) + s for t in DG_TARGETS},
                  setting="transfer", eval_datasets=DG_TARGETS)
    return root


@pytest.fixture(scope="module")
def summary(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return R.report(str(runs), str(out), reference=True), out


def _system(summary_dict, method, tag=""):
    return next(s for s in summary_dict["base2new"] if s["method"] == method and s["tag"] == tag)


def test_per_dataset_stats(summary):
    pets = _system(summary[0], "aple")["datasets"]["OxfordPets"]
    assert pets["base"] == pytest.approx(96.0)
    assert pets["base_std"] == pytest.approx(1.0)                        # sample std (n-1) of 95, 96, 97
    half = 4.302652730 / math.sqrt(3)                                    # t(0.975, 2 df) x std / sqrt(n)
    assert pets["base_ci95"] == pytest.approx([96 - half, 96 + half])
    assert pets["new"] == pytest.approx(97.0)
    assert pets["new_std"] == pytest.approx(0.5)                         # of 97.5, 97, 96.5
    assert pets["new_ci95"] == pytest.approx([97 - half / 2, 97 + half / 2])
    assert pets["hm"] == pytest.approx(2 * 96 * 97 / 193)               # HM of the means, 96.497...
    assert pets["seeds"] == [1, 2, 3]
    assert "DTD" in _system(summary[0], "aple")["datasets"]            # DescribableTextures -> table name


def test_eleven_dataset_average_is_hm_of_averages(summary):
    for method in ("aple", "maple"):
        avg = _system(summary[0], method)["average"]
        base = statistics.mean(statistics.mean(accuracies(method, d, s)[0] for s in SEEDS) for d in DATASETS)
        new = statistics.mean(statistics.mean(accuracies(method, d, s)[1] for s in SEEDS) for d in DATASETS)
        mean_of_hms = statistics.mean(
            hm(statistics.mean(accuracies(method, d, s)[0] for s in SEEDS),
               statistics.mean(accuracies(method, d, s)[1] for s in SEEDS)) for d in DATASETS)
        assert avg["complete"] and avg["datasets"] == list(DATASETS)
        assert avg["base"] == pytest.approx(base) and avg["new"] == pytest.approx(new)
        assert avg["hm"] == pytest.approx(hm(base, new))
        assert abs(avg["hm"] - mean_of_hms) > 1.0                       # the fixture tells the two rules apart
        # the interval: over seeds, of seed s's mean over the 11 datasets
        per_seed = [statistics.mean(accuracies(method, d, s)[0] for d in DATASETS) for s in SEEDS]
        half = 4.302652730 * statistics.stdev(per_seed) / math.sqrt(3)
        assert avg["seeds"] == [1, 2, 3] and avg["base_per_seed"]["values"] == pytest.approx(per_seed)
        assert avg["base_per_seed"]["ci95"] == pytest.approx([base - half, base + half])


def test_incomplete_average_is_labelled(summary):
    s, out = summary
    avg = _system(s, "aple", "ctx8")["average"]
    assert not avg["complete"] and len(avg["datasets"]) == 5
    base = statistics.mean(statistics.mean(accuracies("aple", d, x)[0] + 1 for x in SEEDS) for d in DATASETS[:5])
    assert avg["base"] == pytest.approx(base)
    assert "| aple [ctx8] | ViT-B/16 | 16 | average over 5 datasets (incomplete) |" in (out / "results.md").read_text()


def test_transfer_tables(summary):
    s, out = summary
    (xd,) = s["cross_dataset"]
    assert xd["method"] == "maple" and xd["source"] == "ImageNet" and xd["seeds"] == [1, 2, 3]
    per_target = {t: statistics.mean(xd_accuracy(t, x) for x in SEEDS) for t in XD_TARGETS}
    assert xd["accuracy"]["DTD"]["mean"] == pytest.approx(per_target["DTD"])
    assert xd["average"]["complete"]
    assert xd["average"]["accuracy"] == pytest.approx(statistics.mean(per_target[t] for t in XD_TARGETS[1:]))
    (dg,) = s["domain_generalization"]
    assert dg["accuracy"]["ImageNetA"]["mean"] == pytest.approx(50.0 + 3 + 2)
    assert "average" not in dg
    md = (out / "results.md").read_text()
    assert "| MaPLe (reference) | ViT-B/16 | 16 | – | 70.72 | 64.07 | 49.15 | 50.90 | 76.98 |" in md


def test_markdown_rows_side_by_side_with_reference(summary):
    md = (summary[1] / "results.md").read_text()
    assert ("| OxfordPets | aple | ViT-B/16 | 16 | 1,2,3 | 96.00 ± 1.00 [93.52, 98.48] | 97.00 ± 0.50 [95.76, 98.24] "
            "| 96.50 |") in md
    assert "| OxfordPets | PromptSRC (reference) | ViT-B/16 | 16 | – | 95.33 | 97.30 | 96.30 |" in md
    assert "| MaPLe (reference) | ViT-B/16 | 16 | 11 | – | 82.28 | 75.14 | 78.55 | README: MaPLe |" in md
    assert "mean ± sample std (n-1) over seeds, [95% interval of the mean] (Student t" in md
    saved = json.loads((summary[1] / "results.json").read_text())
    assert saved["kind"] == REPORT_KIND and len(saved["groups"]) == 22 + 5 + 2


def test_pngs_are_written(summary):
    s, out = summary
    names = s["plots"]
    assert "base2new_bars.png" in names
    assert sum(n.startswith("prompt_length_base2new_") for n in names) == 5     # aple 4 vs 8 tokens, 5 datasets
    assert any(n.startswith("history_aple_ViT-B-16_base2new") for n in names)
    assert "cross_dataset_bars.png" in names and "domain_generalization_bars.png" in names   # the maple transfer runs
    assert "world_cross_dataset_bars.png" not in names                                     # no world transfer runs
    for name in names:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000, name


def test_mean_history_over_seeds(runs):
    group = next(g for g in group_runs(find_runs(str(runs)))
                 if g.key.method == "aple" and not g.key.tag and g.key.dataset == "OxfordPets")
    hist = mean_history(group)
    assert [(h["phase"], h["epoch"]) for h in hist] == [("LV", 1), ("LV", 2), ("Stage2", 1), ("Stage2", 2)]
    assert hist[2]["base"] == pytest.approx(54.0) and hist[2]["new"] == pytest.approx(40.0)


def test_history_epochs_count_over_phases():
    assert history_epochs(history(1)) == [1, 2, 3, 4]
    strided = [{"phase": "LV", "epoch": 10}, {"phase": "LV", "epoch": 20}, {"phase": "Stage2", "epoch": 5}]
    assert history_epochs(strided) == [10, 20, 25]


def test_report_into_runs_dir_skips_its_own_aggregate(tmp_path):
    for s in SEEDS:
        write_run(tmp_path, "aple", "DTD", s, {"base": 80.0 + s, "new": 60.0})
    for _ in range(2):
        summary = R.report(str(tmp_path), plots=False)
        assert summary["num_runs"] == 3
    assert (tmp_path / "results.md").exists()


def test_report_joins_an_old_aggregate_with_new_runs(tmp_path):
    """An old study kept only as its aggregate, and runs of a new method: one report over both sources, the old
    groups' per-seed values intact, and `--compare` across them."""
    old, new = tmp_path / "old", tmp_path / "new"
    for s in SEEDS:
        write_run(old / "runs", "coop", "DTD", s, {"base": 70.0 + s, "new": 60.0})
        write_run(new, "mma", "DTD", s, {"base": 75.0 + 2 * s, "new": 61.0})
    R.report(str(old / "runs"), str(old / "study"), plots=False)
    aggregate = str(old / "study" / "results.json")
    summary = R.report([aggregate, str(new)], str(tmp_path / "joined"), plots=False)
    assert summary["num_runs"] == 6 and len(summary["groups"]) == 2
    values = {g["method"]: g["accuracy"]["base"]["values"] for g in summary["groups"]}
    assert values == {"coop": [71.0, 72.0, 73.0], "mma": [77.0, 79.0, 81.0]}
    with pytest.raises(ReportError, match="would overwrite it"):
        R.report([str(new), aggregate], str(old / "study"), plots=False)
    assert R.main([aggregate, str(new), "--compare", "mma,coop", "--out", str(tmp_path / "cmp")]) == 0
    pair = json.loads((tmp_path / "cmp" / "compare_mma_coop.json").read_text())
    assert pair["source"] == f"{aggregate} + {new}"


def test_the_aggregate_records_runs_relative_to_the_runs_directory(tmp_path, monkeypatch):
    """Readable and portable: no absolute path in results.json or results.md; runs joined from another source are
    named relative to the first; aggregates written before, with absolute paths, still read."""
    for s in SEEDS:
        write_run(tmp_path / "study" / "runs", "coop", "DTD", s, {"base": 70.0 + s, "new": 60.0})
        write_run(tmp_path / "new", "mma", "DTD", s, {"base": 75.0 + s, "new": 61.0})
    monkeypatch.chdir(tmp_path / "study")
    summary = R.report("runs", plots=False)
    assert summary["runs_dir"] == "runs"
    assert summary["groups"][0]["runs"] == [f"coop/base2new/DTD/shots_16/seed{s}" for s in SEEDS]
    for name in ("results.json", "results.md"):
        assert str(tmp_path) not in (tmp_path / "study" / "runs" / name).read_text()
    joined = R.report(["runs", str(tmp_path / "new")], "joined", plots=False)
    assert {r for g in joined["groups"] for r in g["runs"]} == {
        *summary["groups"][0]["runs"], *(f"../../new/mma/base2new/DTD/shots_16/seed{s}" for s in SEEDS)}
    old = json.loads((tmp_path / "study" / "runs" / "results.json").read_text())   # as report wrote it before
    old["runs_dir"] = str(tmp_path / "study" / "runs")
    old["groups"][0]["runs"] = [str(tmp_path / "study" / "runs" / r) for r in old["groups"][0]["runs"]]
    (tmp_path / "old.json").write_text(json.dumps(old))
    again = R.report([str(tmp_path / "old.json")], "again", plots=False)
    assert again["groups"][0]["accuracy"] == summary["groups"][0]["accuracy"]
    assert again["groups"][0]["runs"] == old["groups"][0]["runs"]   # names it recorded, kept as they are


def test_few_shot_groups_by_shots(tmp_path):
    for shots in (1, 16):
        write_run(tmp_path, "coop", "DTD", 1, {"all": 40.0 + shots}, setting="all", shots=shots)
    groups = group_runs(find_runs(str(tmp_path)))
    assert [(g.key.shots, g.stats["all"].mean) for g in groups] == [(1, 41.0), (16, 56.0)]


def test_unfinished_run_is_named(tmp_path):
    write_run(tmp_path, "aple", "DTD", 1, {"base": 80.0, "new": 60.0})
    unfinished = tmp_path / "aple" / "base2new" / "DTD" / "shots_16" / "seed2"
    (unfinished / "checkpoints" / "40").mkdir(parents=True)
    (unfinished / "config.json").write_text("{}")
    with pytest.raises(ReportError) as e:
        find_runs(str(tmp_path))
    assert str(unfinished) in str(e.value) and "has not finished" in str(e.value)
    assert len(find_runs(str(tmp_path), skip_unfinished=True)) == 1


@pytest.mark.parametrize("change, key", [(dict(backbone="ViT-L/14"), "backbone.name"),
                                         (dict(shots=8), "dataset.shots"),
                                         (dict(lr=0.01), "optim.lr"),
                                         (dict(n_ctx=8), "prompts.text.n_ctx")])
def test_incompatible_configs_name_both_runs_and_keys(tmp_path, change, key):
    a = write_run(tmp_path, "aple", "DTD", 1, {"base": 80.0, "new": 60.0})
    b = write_run(tmp_path / "other", "aple", "DTD", 2, {"base": 81.0, "new": 61.0}, **change)
    with pytest.raises(ReportError) as e:
        group_runs(find_runs(str(tmp_path)))
    assert str(a) in str(e.value) and str(b) in str(e.value) and key in str(e.value)


def test_a_distilled_runs_teacher_is_a_row_of_its_own(tmp_path):
    """A teacher trained beside a student's packed seeds (or inside its run) shares no config with its method's
    study runs: it is tagged `teacher`, not refused as an incompatible seed of them."""
    write_run(tmp_path, "ivlp", "DTD", 1, {"base": 80.0, "new": 60.0})
    student = write_run(tmp_path, "promptkd", "DTD", 1, {"base": 70.0, "new": 65.0})
    teacher = write_run(tmp_path / "t", "ivlp", "DTD", 1, {"base": 90.0, "new": 70.0}, backbone="ViT-L/14")
    teacher.rename(student.parent / "teacher")
    groups = group_runs(find_runs(str(tmp_path)))
    assert sorted((g.key.method, g.key.tag, g.key.backbone) for g in groups) == [
        ("ivlp", "", "ViT-B/16"), ("ivlp", "teacher", "ViT-L/14"), ("promptkd", "", "ViT-B/16")]


def test_duplicate_seed_is_an_error(tmp_path):
    write_run(tmp_path, "aple", "DTD", 1, {"base": 80.0, "new": 60.0})
    write_run(tmp_path / "copy", "aple", "DTD", 1, {"base": 80.0, "new": 60.0})
    with pytest.raises(ReportError, match="same run"):
        group_runs(find_runs(str(tmp_path)))


def test_empty_missing_and_malformed_inputs(tmp_path, capsys):
    with pytest.raises(ReportError, match="no results.json found below"):
        find_runs(str(tmp_path))
    with pytest.raises(ReportError, match="does not exist"):
        find_runs(str(tmp_path / "nope"))
    bad = tmp_path / "x" / "results.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(ReportError, match=f"{bad} is not valid JSON"):
        find_runs(str(tmp_path))
    bad.write_text(json.dumps({"method": "aple"}))
    with pytest.raises(ReportError, match="lacks keys"):
        find_runs(str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        R.main([str(tmp_path / "nope")])
    assert exit_info.value.code == 2
    assert "error: runs directory" in capsys.readouterr().err


def test_format_run_unchanged():
    table = format_run({"method": "aple", "dataset": "DTD", "seed": 1, "accuracy": {"base": 80.0, "new": 60.0},
                          "hm": 68.571})
    assert table.splitlines()[-1] == "| aple | DTD | 1 | 80.00 | 60.00 | 68.57 |"


def test_format_run_puts_zero_shot_beside_the_run():
    run = {"method": "aple", "dataset": "X", "seed": 1, "accuracy": {"base": 30.0, "new": 20.0}, "hm": 24.0,
           "zero_shot": {"accuracy": {"base": 1.0, "new": 3.0}}}
    assert format_run(run).splitlines()[-1] == "| zero-shot CLIP | X | - | 1.00 | 3.00 | 1.50 |"


def test_format_run_of_packed_seeds_has_a_row_per_seed_then_their_mean_spread_and_zero_shot():
    runs = [{"method": "aple", "dataset": "X", "seed": s, "accuracy": {"base": b, "new": n}, "hm": hm(b, n),
             "zero_shot": {"accuracy": {"base": 1.0, "new": 3.0}}} for s, b, n in ((1, 40, 20), (2, 42, 22), (3, 47, 24))]
    # base: mean 43, sample std sqrt(13) = 3.61, half-width 4.3027 x 3.6056 / sqrt(3) = 8.957; new: 22, 2, 4.968
    assert format_run(runs).splitlines()[2:] == [
        "| aple | X | 1 | 40.00 | 20.00 | 26.67 |", "| aple | X | 2 | 42.00 | 22.00 | 28.88 |",
        "| aple | X | 3 | 47.00 | 24.00 | 31.77 |",
        "| aple | X | mean ± std | 43.00 ± 3.61 | 22.00 ± 2.00 | 29.11 |",
        "| aple | X | 95% interval | [34.04, 51.96] | [17.03, 26.97] | – |",
        "| zero-shot CLIP | X | - | 1.00 | 3.00 | 1.50 |",
        "", "3 seeds: mean ± sample std (n-1); 95% interval of the mean (Student t); HM of the means"]
    one = [{"method": "aple", "dataset": "DTD", "seed": s, "accuracy": {"all": 50.0 + s}} for s in (2, 3)]
    assert format_run(one).splitlines()[2:5] == ["| aple | DTD | 2 | 52.00 |", "| aple | DTD | 3 | 53.00 |",
                                                   "| aple | DTD | mean ± std | 52.50 ± 0.71 |"]


def test_reference_numbers_are_internally_consistent():
    """Catches transcription slips: HM = 2BN/(B+N) and per-dataset means = the README averages, to 0.01."""
    names = {"CLIP": "CLIP (hand-crafted)"}
    for method, table in ref.BASE2NEW_PER_DATASET.items():
        assert set(table) == set(DATASETS)
        for b, n, h in table.values():
            assert hm(b, n) == pytest.approx(h, abs=0.006)
        base, new, _, _ = ref.BASE2NEW_AVERAGE[names.get(method, method)]
        assert statistics.mean(v[0] for v in table.values()) == pytest.approx(base, abs=0.01)
        assert statistics.mean(v[1] for v in table.values()) == pytest.approx(new, abs=0.01)
    for method, (b, n, h, _) in ref.BASE2NEW_AVERAGE.items():
        if method not in ("RPO", "HPT"):     # as printed in the awesome-list README, HM is off by ~0.2
            assert hm(b, n) == pytest.approx(h, abs=0.01), method


def test_the_world_suite_is_a_complete_average():
    from aple_jax.world import SUITE
    per_dataset = {d: {"base": 50.0 + i, "new": 40.0} for i, d in enumerate(SUITE)}
    avg = base2new_average(per_dataset)
    assert avg["complete"] and avg["datasets"] == list(SUITE) and avg["base"] == 55.0
    assert not base2new_average({d: v for d, v in per_dataset.items() if d != "WorldScenes"})["complete"]


def test_world_transfer_tables(tmp_path):
    """`:world,xd` / `:world,dg` runs (trained on WorldScenes-Tint) fill the world's own transfer tables, with a mean
    over the targets; they stay out of the ImageNet tables."""
    source = "world:WorldScenes-Tint"
    xd = (source,) + tuple(f"world:{t}" for t in _world_names(WORLD_XD_TARGETS))
    dg = (source,) + tuple(f"world:{t}" for t in _world_names(WORLD_DG_TARGETS))
    for s in SEEDS:
        write_run(tmp_path / "xd", "aple", "WorldScenes-Tint", s, {t: 10.0 * i + s for i, t in enumerate(xd)},
                  setting="transfer", backbone="world", eval_datasets=xd)
        write_run(tmp_path / "dg", "aple", "WorldScenes-Tint", s, {t: 5.0 * i + s for i, t in enumerate(dg)},
                  setting="transfer", backbone="world", eval_datasets=dg)
    s = R.report(str(tmp_path), str(tmp_path / "out"), plots=False)
    assert s["cross_dataset"] == [] and s["domain_generalization"] == []
    (wxd,) = s["world_cross_dataset"]
    assert wxd["source"] == "WorldScenes-Tint" and wxd["accuracy"]["WorldObjects-Tint"]["mean"] == pytest.approx(12.0)
    assert wxd["average"]["complete"]
    assert wxd["average"]["accuracy"] == pytest.approx(statistics.mean(10.0 * i + 2 for i in range(1, len(xd))))
    (wdg,) = s["world_domain_generalization"]
    assert wdg["accuracy"]["WorldScenes-Swap"]["mean"] == pytest.approx(5.0 * 7 + 2)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "## World cross-dataset: WorldScenes-Tint (source) -> the other families" in md
    assert "| aple | world | 16 | 1,2,3 | 2.00 ± 1.00 [-0.48, 4.48] | 7.00 ± 1.00 [4.52, 9.48] |" in md   # source, WorldScenes


def _environment(jax_version: str) -> dict:
    return {"packages": {"jax": jax_version}, "python": "3.12.3", "backend": "cpu", "device_kind": "cpu",
            "device_count": 1, "process_count": 1, "cpu": "EPYC", "jax_config": {}, "variables": {},
            "dtype": "float32", "aple_jax": {"version": "0.1.0", "commit": "f38c72a0", "dirty": False}}


def test_report_prints_each_tables_environment_and_flags_a_mixed_one(tmp_path):
    for s in SEEDS:
        write_run(tmp_path / "same", "aple", "OxfordPets", s, {"base": 90.0, "new": 80.0},
                  environment=_environment("0.10.2"))
        write_run(tmp_path / "mixed", "aple", "OxfordPets", s, {"base": 90.0, "new": 80.0},
                  environment=_environment("0.10.2" if s < 3 else "0.10.0"))
    R.report(str(tmp_path / "same"), str(tmp_path / "out_same"), plots=False)
    md = (tmp_path / "out_same" / "results.md").read_text()
    assert md.count("Environment: jax 0.10.2; cpu (cpu) x1; CPU EPYC; dtype float32; aple-jax 0.1.0 @ f38c72a0") == 3
    assert "mixes" not in md and "not recorded" not in md
    summary = R.report(str(tmp_path / "mixed"), str(tmp_path / "out_mixed"), plots=False)
    assert summary["environments"]["base2new"]["differing"] == ["packages.jax"]
    md = (tmp_path / "out_mixed" / "results.md").read_text()
    assert md.count("**Warning: this table mixes 2 environments** (they differ in packages.jax)") == 3
    assert "- Environment 1 (2 runs): jax 0.10.2" in md and "- Environment 2 (1 runs): jax 0.10.0" in md


def test_runs_without_an_environment_are_marked(summary):
    md = (summary[1] / "results.md").read_text()
    assert f"environment not recorded: {summary[0]['num_runs']} runs" in md          # under "Every group"
    assert "environment not recorded: 81 runs" in md and "Environment" not in md     # base-to-novel: 33 + 33 + 15


def test_bars_carry_the_95_percent_intervals(summary, tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = []
    original = matplotlib.axes.Axes.bar

    def bar(self, x, height, *args, **kwargs):
        drawn.append((kwargs.get("label"), list(height), kwargs.get("yerr")))
        return original(self, x, height, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", bar)
    plot_base2new_bars(summary[0], str(tmp_path / "bars.png"))
    names = sorted({d for s in summary[0]["base2new"] for d in s["datasets"]}, key=dataset_order) + ["Average"]
    base = next(d for d in drawn if d[0].startswith("aple (") and d[2] is not None)   # the first panel: Base
    pets = names.index("OxfordPets")
    half = 4.302652730 / math.sqrt(3)
    assert base[1][pets] == pytest.approx(96.0) and list(base[2][:, pets]) == pytest.approx([half, half])
    assert base[2][0, -1] > 0                                                        # the average has its interval
    assert sum(d[2] is None for d in drawn) == len(summary[0]["base2new"])           # HM: no error bars
