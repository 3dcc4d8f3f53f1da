"""sweep.py: expansion into run directories, launch.py commands that resolve to the same configs, skipping finished
runs, and one real tiny run through the in-process runner."""
from __future__ import annotations

import json
import os
import shlex
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from aple_jax import report, sweep
from aple_jax.errors import ConfigError
from configs import aple as aple_config

B2N = ["ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "Flowers102", "Food101", "FGVCAircraft", "SUN397",
       "DTD", "EuroSAT", "UCF101"]


def test_expand_datasets():
    assert sweep.expand_datasets("base2new11") == B2N
    assert sweep.expand_datasets("OxfordPets, DTD,") == ["OxfordPets", "DTD"]
    assert sweep.expand_datasets("world3,world:WorldShapes-Sketch") == [
        "world:WorldObjects", "world:WorldCounts", "world:WorldScenes", "world:WorldShapes-Sketch"]
    from aple_jax.world import SUITE
    assert sweep.expand_datasets("world11") == [f"world:{name}" for name in SUITE] and len(SUITE) == 11
    with pytest.raises(ValueError, match="unknown world dataset 'Nope'.*WorldObjects"):
        sweep.expand_datasets("world:Nope")
    with pytest.raises(ValueError, match="unknown dataset 'Foo'"):
        sweep.expand_datasets("OxfordPets,Foo")


def test_plan_expands_configs_datasets_seeds(tmp_path):
    runs = sweep.plan(["configs/aple.py", "configs/maple.py"], B2N, [1, 2, 3], "data=/DATA,weights=/w", [],
                      str(tmp_path))
    assert len(runs) == 2 * 11 * 3
    assert len({r.workdir for r in runs}) == len(runs)
    pets = next(r for r in runs if r.config.method == "aple" and r.config.dataset.name == "OxfordPets"
                and r.config.seed == 2)
    assert pets.workdir == os.path.join(tmp_path, "aple", "base2new", "OxfordPets", "shots_16", "seed2")
    assert pets.arg == "dataset=OxfordPets,seed=2,data=/DATA,weights=/w"
    assert pets.config.dataset.root == "/DATA" and pets.config.backbone.weights == "/w"


def test_tags_transfer_and_overrides_in_dirs(tmp_path):
    (tagged,) = sweep.plan(["configs/aple.py"], ["DTD"], [1], "", ["tag=ctx8", "prompts.text.n_ctx=8",
                                                                    "adapter.enabled=false"], str(tmp_path))
    assert tagged.workdir == os.path.join(tmp_path, "aple-ctx8", "base2new", "DTD", "shots_16", "seed1")
    assert tagged.config.prompts.text.n_ctx == 8 and tagged.config.adapter.enabled is False
    (plugged,) = sweep.plan(["configs/aple.py"], ["DTD"], [1], "plugin=dept", ["tag=ctx8"], str(tmp_path))
    assert plugged.workdir == os.path.join(tmp_path, "aple+dept-ctx8", "base2new", "DTD", "shots_16", "seed1")
    source = sweep.plan(["configs/maple.py"], [], [2], "dg", ["eval_only_from=runs/maple/xd/seed{seed}"], "r")[0]
    assert source.config.eval_only_from == "runs/maple/xd/seed2"
    assert source.command().endswith("--config.eval_only_from=runs/maple/xd/seed2")
    each = sweep.plan(["configs/maple.py", "configs/coop.py"], [], [1], "dg", ["eval_only_from=runs/{config}/s{seed}"],
                      "r")
    assert [r.config.eval_only_from for r in each] == ["runs/maple/s1", "runs/coop/s1"]
    xd, dg = (sweep.plan(["configs/maple.py"], [], [3], a, [], str(tmp_path))[0] for a in ("xd", "dg"))
    assert xd.workdir == os.path.join(tmp_path, "maple", "transfer-xd", "ImageNet", "shots_16", "seed3")
    assert dg.workdir == os.path.join(tmp_path, "maple", "transfer-dg", "ImageNet", "shots_16", "seed3")
    wxd, wdg = (sweep.plan(["configs/aple.py"], [], [1], a, [], str(tmp_path))[0] for a in ("world,xd", "world,dg"))
    assert wxd.workdir == os.path.join(tmp_path, "aple", "transfer-xd", "WorldScenes-Tint", "shots_16", "seed1")
    assert wdg.workdir == os.path.join(tmp_path, "aple", "transfer-dg", "WorldScenes-Tint", "shots_16", "seed1")
    assert wdg.config.dataset.eval_datasets[:2] == ("world:WorldScenes-Tint", "world:WorldScenes")
    assert len(wdg.config.dataset.eval_datasets) == 8
    assert wxd.config.backbone.name == "world" and "world:WorldSizes-Tint" in wxd.config.dataset.eval_datasets


def test_bad_overrides_and_duplicate_dirs(tmp_path):
    c = aple_config.get_config()
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'; did you mean 'optim.lr'"):
        sweep.apply_override(c, "optim.lrr=0.1")
    with pytest.raises(ValueError, match="expected true or false"):
        sweep.apply_override(c, "adapter.enabled=maybe")
    with pytest.raises(ValueError, match="expected a value like 20"):
        sweep.apply_override(c, "optim.epochs=many")
    with pytest.raises(ValueError, match="share a run directory"):
        sweep.plan(["configs/aple.py"], ["DTD", "dtd"], [1], "", [], str(tmp_path))


def parse_launch_command(line: str, monkeypatch):
    """The (config, workdir) launch.py would get from a printed command, parsed by absl as launch.py does."""
    words = shlex.split(line)
    assert words[:2] == ["python", "launch.py"]
    monkeypatch.setattr(sys, "argv", words[1:])
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True)
    flags.DEFINE_string("workdir", None, "", flag_values=fv)
    fv(words[1:])
    return fv.config, fv.workdir


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")   # inside ml_collections
def test_print_commands_resolve_to_the_planned_configs(tmp_path, capsys, monkeypatch):
    argv = ["--configs", "configs/aple.py,configs/coop.py", "--datasets", "OxfordPets,DTD", "--seeds", "1,2",
            "--args", "data=/DATA,weights=/w", "--override", "tag=lr01", "--override", "optim.lr=0.01",
            "--runs-dir", str(tmp_path)]
    planned = sweep.plan(["configs/aple.py", "configs/coop.py"], ["OxfordPets", "DTD"], [1, 2],
                         "data=/DATA,weights=/w", ["tag=lr01", "optim.lr=0.01"], str(tmp_path))
    finished = planned[3]
    os.makedirs(finished.workdir)
    with open(os.path.join(finished.workdir, "results.json"), "w") as f:
        json.dump({"config": finished.config.to_dict()}, f)
    assert sweep.main(argv + ["--print-commands"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 8 - 1
    assert f"skip {finished.workdir}: results.json exists (finished)" in err
    for line, run in zip(lines, [r for r in planned if r is not finished]):
        config, workdir = parse_launch_command(line, monkeypatch)
        assert workdir == run.workdir
        assert config.to_dict() == run.config.to_dict()
        assert config.optim.lr == 0.01 and config.tag == "lr01"
    assert not os.path.exists(planned[0].workdir)      # printing creates nothing


def test_finished_run_of_another_config_is_not_skipped_silently(tmp_path):
    (run,) = sweep.plan(["configs/aple.py"], ["DTD"], [1], "", [], str(tmp_path))
    os.makedirs(run.workdir)
    other = run.config.to_dict()
    other["optim"]["lr"] = 0.5
    with open(os.path.join(run.workdir, "results.json"), "w") as f:
        json.dump({"config": other}, f)
    with pytest.raises(ValueError, match=r"holds results of another config \(differs in \['optim.lr'\]\)"):
        sweep.check_finished(run)


def test_dry_run_lists_without_running(tmp_path, capsys):
    assert sweep.main(["--configs", "configs/ivlp.py", "--datasets", "DTD", "--seeds", "1,2,3", "--dry-run",
                       "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"[1/3] would run {os.path.join(tmp_path, 'ivlp', 'base2new', 'DTD', 'shots_16', 'seed1')}"
    assert len(out) == 3 and not os.listdir(tmp_path)


@pytest.mark.slow
def test_real_tiny_run_then_skip(tmp_path, capsys):
    argv = ["--configs", "configs/zeroshot.py", "--args", "tiny", "--seeds", "1", "--runs-dir", str(tmp_path)]
    assert sweep.main(argv) == 0
    workdir = os.path.join(tmp_path, "zeroshot", "base2new", "Synthetic", "shots_16", "seed1")
    out = capsys.readouterr().out
    assert f"[1/1] run {workdir}" in out and "| zeroshot | Synthetic | 1 |" in out
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    assert set(results["accuracy"]) == {"base", "new"}
    assert sweep.main(argv) == 0
    assert f"[1/1] skip {workdir}: results.json exists (finished)" in capsys.readouterr().out
    summary = report.report(str(tmp_path), plots=False)
    assert summary["num_runs"] == 1 and summary["base2new"][0]["datasets"]["Synthetic"]["seeds"] == [1]


def test_pack_seeds_groups_the_seeds_of_a_config_and_dataset(tmp_path):
    runs = sweep.plan(["configs/aple.py", "configs/coop.py"], ["DTD", "EuroSAT"], [1, 2, 3], "", [], str(tmp_path))
    groups = sweep.seed_groups(runs, pack_seeds=True)
    assert len(groups) == 4 and all([r.config.seed for r in g] == [1, 2, 3] for g in groups)
    assert all(len({(r.config_file, r.config.dataset.name) for r in g}) == 1 for g in groups)
    assert sweep.seed_groups(runs, pack_seeds=False) == [[r] for r in runs]
    with_seed = sweep.plan(["configs/maple.py"], [], [1, 2], "dg", ["eval_only_from=runs/x/seed{seed}"], "r")
    with pytest.raises(ConfigError, match=r"differ in more than the seed \(\['eval_only_from'\]"):
        sweep.seed_groups(with_seed, pack_seeds=True)


@pytest.mark.slow
def test_packed_seeds_sweep_writes_each_seed_and_skips_when_done(tmp_path, capsys):
    argv = ["--configs", "configs/ivlp.py", "--args", "tiny", "--seeds", "1,2", "--pack-seeds",
            "--override", "optim.epochs=1", "--runs-dir", str(tmp_path)]
    assert sweep.main(argv) == 0
    parent = os.path.join(tmp_path, "ivlp", "base2new", "Synthetic", "shots_16")
    out = capsys.readouterr().out
    assert f"[1/1] run {parent}/seed{{1,2}}" in out and "sweep: 2 finished, 0 skipped" in out
    for seed in (1, 2):
        with open(os.path.join(parent, f"seed{seed}", "results.json")) as f:
            results = json.load(f)
        assert results["seed"] == seed and results["packed_seeds"] == 2
        with open(os.path.join(parent, f"seed{seed}", "train.log")) as f:
            assert f"seed{seed}" in f.read()
    assert sweep.main(argv) == 0
    assert f"[1/1] skip {parent}/seed{{1,2}}" in capsys.readouterr().out


@pytest.mark.slow
def test_a_packed_distilled_sweep_trains_one_teacher_beside_its_seeds(tmp_path, capsys):
    """As a packed `run` does: the teacher in <folder>/teacher, trained once, named by every seed."""
    argv = ["--configs", "configs/promptkd.py", "--args", "tiny", "--seeds", "1,2", "--pack-seeds",
            "--override", "optim.epochs=1", "--runs-dir", str(tmp_path)]
    assert sweep.main(argv) == 0
    assert "sweep: 2 finished, 0 skipped" in capsys.readouterr().out
    parent = os.path.join(tmp_path, "promptkd", "base2new", "Synthetic", "shots_16")
    with open(os.path.join(parent, "teacher", "results.json")) as f:
        teacher = json.load(f)
    assert teacher["method"] == "ivlp" and teacher["transductive"] is False
    for seed in (1, 2):
        with open(os.path.join(parent, f"seed{seed}", "results.json")) as f:
            results = json.load(f)
        assert results["transductive"] is True and results["kd_teacher"]["accuracy"] == teacher["accuracy"]
        with open(os.path.join(parent, f"seed{seed}", "config.json")) as f:
            assert json.load(f)["kd"]["teacher"] == os.path.join(parent, "teacher")


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two parallel jobs need two CPU cores")
def test_parallel_jobs_run_on_cores_of_their_own_and_report_failures(tmp_path, capsys):
    argv = ["--configs", "configs/zeroshot.py,configs/ivlp.py", "--args", "tiny", "--seeds", "1,2", "--pack-seeds",
            "--override", "optim.epochs=1", "--runs-dir", str(tmp_path), "--jobs", "2"]
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert "sweep: 4 finished, 0 skipped" in out and "| ivlp | Synthetic | 2 |" in out
    assert out.count("(live output: ") == 2   # each job's output while it runs, for tail -f
    cores = {}
    for config in ("zeroshot", "ivlp"):
        for seed in (1, 2):
            run = os.path.join(tmp_path, config, "base2new", "Synthetic", "shots_16", f"seed{seed}")
            with open(os.path.join(run, "results.json")) as f:
                assert json.load(f)["seed"] == seed
            with open(os.path.join(run, "train.log")) as f:
                cores[config] = f.readline().split("on CPU cores ")[1].split("]")[0]
    assert cores["zeroshot"] != cores["ivlp"]   # the two jobs ran side by side, each pinned to its own core set
    broken = ["--configs", "configs/zeroshot.py", "--args", "tiny,weights=/nonexistent/w.npz", "--seeds", "1",
              "--runs-dir", str(tmp_path / "broken"), "--jobs", "2"]
    assert sweep.main(broken) == 1   # a run failing in its child process is listed, as in a serial sweep
    failed = capsys.readouterr().out
    assert "1 failed" in failed and "FAILED" in failed and "w.npz' does not exist" in failed


def test_variants_tag_their_runs_and_apply_their_overrides(tmp_path):
    runs = sweep.plan(["configs/aple.py"], ["DTD"], [1, 2], "", ["optim.lr=0.01"], str(tmp_path),
                      ["ctx1:prompts.text.n_ctx=1;prompts.vision.n_ctx=1", "noadapter:adapter.enabled=false", "as_is:"])
    assert len(runs) == 3 * 2
    by_tag = {r.config.tag: r for r in runs if r.config.seed == 2}
    assert by_tag["ctx1"].workdir == os.path.join(tmp_path, "aple-ctx1", "base2new", "DTD", "shots_16", "seed2")
    assert by_tag["ctx1"].config.prompts.vision.n_ctx == 1 and by_tag["ctx1"].config.adapter.enabled
    assert not by_tag["noadapter"].config.adapter.enabled and by_tag["noadapter"].config.prompts.text.n_ctx == 4
    assert by_tag["as_is"].config.optim.lr == 0.01 and by_tag["as_is"].command().endswith("--config.tag=as_is")
    for bad in ("ctx1", ":prompts.text.n_ctx=1", "a/b:x=1"):
        with pytest.raises(ConfigError, match="expected NAME:key=value"):
            sweep.plan(["configs/aple.py"], ["DTD"], [1], "", [], str(tmp_path), [bad])
    with pytest.raises(ConfigError, match="unknown config key 'prompts.text.nctx'"):
        sweep.plan(["configs/aple.py"], ["DTD"], [1], "", [], str(tmp_path), ["x:prompts.text.nctx=2"])


def test_parallel_jobs_are_refused_on_an_accelerator_host(tmp_path, capsys, monkeypatch):
    assert sweep.jax_backend() == "cpu"   # asked of a child process: this machine's JAX runs on its CPU
    monkeypatch.setattr(sweep, "jax_backend", lambda: "gpu")
    argv = ["--configs", "configs/zeroshot.py", "--args", "tiny", "--seeds", "1", "--runs-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(argv + ["--jobs", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --jobs 2: this host runs JAX on gpu") and "Traceback" not in err
    assert not os.listdir(tmp_path)
    sweep.check_jobs_backend(1)   # one run at a time is fine anywhere
