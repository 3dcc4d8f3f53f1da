"""Sweeps, reports and the other `python -m` entry points refuse bad inputs in one line with exit status 2."""
import json
import os

import pytest

from aple_jax import sweep
from tests import cli
from tests.cli import Case, module


def _sweep(runs_dir, *args, seeds="1", extra_args="tiny"):
    return module("aple_jax.sweep", "--configs", "configs/coop.py", "--args", extra_args, "--seeds", seeds,
                  "--runs-dir", runs_dir, "--dry-run", *args)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_report")
    out = {k: str(root / k) for k in ("runs", "finished", "empty", "bad_json", "no_keys")}
    (root / "empty").mkdir()
    finished = sweep.plan(["configs/coop.py"], [], [1], "tiny", [], out["finished"])[0].workdir
    os.makedirs(finished)
    with open(os.path.join(finished, "results.json"), "w") as f:
        f.write('{"method": "coop", "acc')
    out["finished_results"] = os.path.join(finished, "results.json")
    for name, text in (("bad_json", "{\"method\": "), ("no_keys", json.dumps({"method": "coop"}))):
        os.makedirs(root / name / "run1")
        (root / name / "run1" / "results.json").write_text(text)
    return out


def _cases(d):
    runs = d["runs"]
    return [
        Case("sweep_config_file", module("aple_jax.sweep", "--configs", "configs/nope.py", "--runs-dir", runs),
             "configs/nope.py"),
        Case("sweep_unknown_key", _sweep(runs, "--override", "optim.lrr=1"),
             "unknown config key 'optim.lrr'; did you mean 'optim.lr'?"),
        Case("sweep_negative_lr", _sweep(runs, "--override", "optim.lr=-1"), "optim.lr=-1.0"),
        Case("sweep_batch_zero", _sweep(runs, "--override", "batch_size=0"), "batch_size=0"),
        Case("sweep_bool", _sweep(runs, "--override", "adapter.enabled=maybe"), "adapter.enabled='maybe'"),
        Case("sweep_not_key_value", _sweep(runs, "--override", "optim.lr"), "'optim.lr' is not key=value"),
        Case("sweep_seed_zero", _sweep(runs, seeds="0"), "--seeds '0'"),
        Case("sweep_seed_text", _sweep(runs, seeds="one"), "--seeds 'one'"),
        Case("sweep_dataset", _sweep(runs, "--datasets", "Petz"), "'Petz'"),
        Case("sweep_shots", _sweep(runs, extra_args="tiny,shots=-3"), "shots=-3"),
        Case("sweep_jobs_zero", _sweep(runs, "--jobs", "0"), "--jobs 0: expected a number of parallel runs >= 1"),
        Case("sweep_jobs_beyond_cores", _sweep(runs, "--jobs", "4096"), "--jobs 4096: this process may use"),
        Case("sweep_jobs_stop_on_error", _sweep(runs, "--jobs", "2", "--stop-on-error"), "drop --jobs 2"),
        Case("sweep_finished_results_broken", _sweep(d["finished"]), d["finished_results"]),
        Case("report_missing", module("aple_jax.report", "/nonexistent/runs"), "/nonexistent/runs"),
        Case("report_empty", module("aple_jax.report", d["empty"]), "no results.json found below"),
        Case("report_bad_json", module("aple_jax.report", d["bad_json"]), "results.json is not valid JSON"),
        Case("report_missing_keys", module("aple_jax.report", d["no_keys"]), "lacks keys"),
        Case("convert_missing_checkpoint", module("aple_jax.clip.convert_openai", "/nonexistent/ViT.pt",
                                                  f"{runs}/converted"), "/nonexistent/ViT.pt"),
    ]


def test_sweep_report_and_convert_refuse_bad_inputs_in_one_line(dirs):
    cli.assert_all_user_errors(_cases(dirs))
