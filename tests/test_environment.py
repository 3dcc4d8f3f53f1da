"""The environment every run records (results.json, config.json's header), its resume rule, and how it is compared."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import jax
import pytest

from aple_jax import environment
from aple_jax.run import run
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parent.parent


def _git_head() -> str | None:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return None
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_results_json_and_config_json_record_the_environment(tmp_path):
    config = tiny_config("zeroshot")
    results = run(config, str(tmp_path))
    env = results["environment"]
    assert json.loads((tmp_path / "results.json").read_text())["environment"] == env
    assert json.loads((tmp_path / "config.json").read_text())["environment"] == env
    assert "environment_at_start" not in results
    assert env["packages"]["jax"] == jax.__version__ and env["packages"]["numpy"] is not None
    assert set(env["packages"]) == set(environment.PACKAGES)
    assert (env["backend"], env["device_count"], env["process_count"]) == (jax.default_backend(), jax.device_count(),
                                                                           jax.process_count())
    assert env["device_kind"] == jax.devices()[0].device_kind
    assert env["dtype"] == config.backbone.dtype
    assert env["jax_config"]["jax_enable_x64"] is False and "jax_default_matmul_precision" in env["jax_config"]
    assert env["aple_jax"]["version"] == "0.1.0"
    head = _git_head()
    assert env["aple_jax"]["commit"] == head and (head is None) == (env["aple_jax"]["dirty"] is None)


def test_a_run_resumes_in_another_environment_and_records_both(tmp_path):
    """config.json's environment is a header, not config: a changed jax resumes, and results.json keeps both."""
    config = tiny_config("zeroshot")
    run(config, str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["environment"]["packages"]["jax"] = "0.0.1"
    (tmp_path / "config.json").write_text(json.dumps(saved))
    os.remove(tmp_path / "results.json")
    results = run(config, str(tmp_path))
    assert results["environment_at_start"]["packages"]["jax"] == "0.0.1"
    assert results["environment"]["packages"]["jax"] == jax.__version__
    assert environment.differing_fields(results["environment_at_start"], results["environment"]) == ["packages.jax"]


def test_without_git_or_outside_a_checkout_the_commit_is_none(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))          # no git on PATH
    environment.project_version.cache_clear()
    try:
        assert environment.project_version() == {"version": "0.1.0", "commit": None, "dirty": None}
        monkeypatch.setattr(environment, "_ROOT", tmp_path)    # not a checkout, no pyproject.toml
        environment.project_version.cache_clear()
        assert environment.project_version()["commit"] is None
    finally:
        environment.project_version.cache_clear()


def test_relevant_variables_keep_what_shapes_numbers():
    env = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false", "JAX_DEFAULT_MATMUL_PRECISION": "highest",
           "NVIDIA_TF32_OVERRIDE": "0", "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "XLA_PYTHON_CLIENT_MEM_FRACTION": ".5",
           "HOME": "/root", "JAX_COMPILATION_CACHE_DIR": "/tmp/c"}
    assert environment.relevant_variables(env) == {"JAX_DEFAULT_MATMUL_PRECISION": "highest",
                                                   "NVIDIA_TF32_OVERRIDE": "0",
                                                   "XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}


def _env(**changes):
    env = {"packages": {"jax": "0.10.2", "numpy": "2.4.6"}, "python": "3.12.3", "platform": "Linux", "cpu": "EPYC",
           "backend": "cpu", "device_kind": "cpu", "device_count": 1, "process_count": 1,
           "jax_config": {"jax_enable_x64": False}, "variables": {}, "dtype": "float32",
           "aple_jax": {"version": "0.1.0", "commit": "abc", "dirty": False}}
    for key, value in changes.items():
        outer, _, inner = key.partition("__")
        if inner:
            env[outer] = {**env[outer], inner: value}
        else:
            env[outer] = value
    return env


def test_summarize_counts_distinct_number_shaping_environments():
    same = environment.summarize([("a", {"environment": _env()}), ("b", {"environment": _env(python="3.13.0")}),
                                  ("c", {"environment": _env(aple_jax__dirty=True)})])
    assert not same["mixed"] and [e["runs"] for e in same["environments"]] == [3]   # python, dirty: not compared
    mixed = environment.summarize([("a", {"environment": _env()}), ("b", {"environment": _env(packages__jax="0.10.0")}),
                                   ("c", {"environment": _env(variables={"XLA_FLAGS": "--x"})}), ("old", {})])
    assert mixed["mixed"] and [e["runs"] for e in mixed["environments"]] == [1, 1, 1]
    assert mixed["differing"] == ["packages.jax", "variables.XLA_FLAGS"] and mixed["not_recorded"] == ["old"]
    note = environment.markdown_note(mixed)
    assert "**Warning: this table mixes 3 environments** (they differ in packages.jax, variables.XLA_FLAGS)" in note
    assert "environment not recorded: 1 runs" in note and "jax 0.10.0" in note and "XLA_FLAGS=--x" in note
    resumed = environment.summarize([("r", {"environment": _env(), "environment_at_start": _env(device_count=2)})])
    assert resumed["mixed"] and resumed["differing"] == ["device_count"]
