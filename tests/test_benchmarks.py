"""The prepared benchmarks run end to end on tiny shapes, so they cannot rot before a GPU is at hand."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKES = {   # name: command line (`{out}` is the test's folder); all start together, each mostly compiles on one core
    "accelerator": ["benchmarks/accelerator.py", "--smoke", "--json", "{out}/r.json"],
    "train_step": ["benchmarks/train_step.py", "--backbone", "tiny", "--methods", "cocoop,aple", "--classes", "5",
                   "--batches", "1,2", "--cocoop-pass", "2", "--dtype", "bfloat16", "--remat", "--repeats", "1",
                   "--budget", "1", "--json", "{out}/r.json"],
    "eval": ["benchmarks/eval.py", "--backbone", "tiny", "--batch", "8", "--images", "8", "--classes", "4",
             "--workers", "1", "--passes", "1", "--device-input", "--json", "{out}/e.json"],
    "sweep_jobs": ["benchmarks/sweep_jobs.py", "--config", "configs/coop.py,configs/ivlp.py", "--args", "tiny",
                   "--datasets", "", "--epochs", "1", "--json", "{out}/s.json"],
}
# Started only when their tests run, after the smokes above: they run several processes one after another each.
SERIAL_SMOKES = {
    "world_sensitivity": ["benchmarks/world_sensitivity.py", "--config", "configs/coop.py:tiny", "--seeds", "1,2",
                          "--nudges", "1", "--xla", "", "--json", "{out}/w.json"],
    "determinism": ["benchmarks/determinism.py", "--cpu", "--backbone", "tiny", "--classes", "5", "--batch", "2",
                    "--steps", "2", "--timed", "2", "--json", "{out}/d.json"],
    "determinism_no_gpu": ["benchmarks/determinism.py"],
    "lora_overhead": ["benchmarks/train_step.py", "--backbone", "tiny", "--lora-overhead", "--classes", "5",
                      "--batches", "2", "--repeats", "1", "--budget", "1"],
}


def _start(specs: dict[str, list[str]], tmp_path_factory):
    """name -> (folder, started process) of every smoke of `specs`, side by side; none outlives the module."""
    started = {}
    for name, argv in specs.items():
        out = tmp_path_factory.mktemp(name)
        started[name] = (out, subprocess.Popen([sys.executable, *(a.format(out=out) for a in argv)], cwd=ROOT,
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    yield started
    for _, proc in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def smokes(tmp_path_factory):
    yield from _start(SMOKES, tmp_path_factory)


@pytest.fixture(scope="module")
def serial_smokes(tmp_path_factory):
    yield from _start(SERIAL_SMOKES, tmp_path_factory)


def _finished(smokes, name: str):
    """(folder, stdout, stderr) of a smoke that exited 0."""
    out, proc = smokes[name]
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return out, stdout, stderr


@pytest.mark.slow
def test_accelerator_benchmark_smoke(smokes):
    tmp_path, stdout, _ = _finished(smokes, "accelerator")
    assert "| train aple/V, C=10, batch 4 |" in stdout and "3 seeds packed" in stdout
    for ratio in ("APLe V / LV (teacher.images=cached)", "CoCoOp batch 4 / (4 x batch 1)",
                  "IVLP 3 packed seeds / (3 x 1 seed)"):
        assert f"- {ratio}: " in stdout, stdout
    assert os.path.getsize(tmp_path / "r.json") > 0


@pytest.mark.slow
def test_train_step_benchmark_smoke(smokes):
    tmp_path, stdout, _ = _finished(smokes, "train_step")
    assert "| cocoop | train | 5 | 1 |" in stdout and "x of " in stdout   # batch 2 against 2 steps at batch 1
    with open(tmp_path / "r.json") as f:
        rows = json.load(f)
    assert [r["batch"] for r in rows] == [1, 2] * 4 and "vs_batch1" in rows[1]   # cocoop, then aple's 3 phases


@pytest.mark.slow
def test_lora_overhead_benchmark_smoke(serial_smokes):
    _, stdout, _ = _finished(serial_smokes, "lora_overhead")
    assert "the recipe touches 12 matrices" in stdout   # q, k, v of the tiny CLIP's 2 blocks in 2 towers
    rows = [line for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("| step")]
    assert len(rows) == 6 and rows[-2].startswith("| one merge pass") and all(" nan " not in r for r in rows)
    assert rows[-1].startswith("| one pass of the touched matrices") and "by FLOPs" in stdout


@pytest.mark.slow
def test_eval_benchmark_smoke(smokes):
    """With a loader worker process: its shared memory is released (no resource_tracker warning at exit)."""
    tmp_path, stdout, stderr = _finished(smokes, "eval")
    assert "resource_tracker" not in stderr and "leaked" not in stderr, stderr[-3000:]
    for row in ("| bare image forward |", "| evaluate, host-generated input", "| evaluate, device-resident input",
                "| eval step alone, device-resident input"):
        assert row in stdout, stdout
    assert "evaluation (device-resident input) at" in stdout
    with open(tmp_path / "e.json") as f:
        report = json.load(f)
    assert report["num_examples"] == 8 and report["num_classes"] == 4
    assert all(rate > 0 for rate in report["images_per_s"].values())


@pytest.mark.slow
def test_sweep_jobs_benchmark_smoke(smokes):
    tmp_path, stdout, _ = _finished(smokes, "sweep_jobs")
    assert "| --jobs 1 |" in stdout and "against one group at a time:" in stdout
    with open(tmp_path / "s.json") as f:
        report = json.load(f)
    serial, parallel = report["rows"]
    assert serial["jobs"] == 1 and serial["steps"] == parallel["steps"] > 0   # the same runs, one way and the other
    assert report["speedup"] == pytest.approx(serial["seconds"] / parallel["seconds"])


@pytest.mark.slow
def test_world_sensitivity_benchmark_smoke(serial_smokes):
    """A one-ulp nudge of the initial prompts reaches the loss; packed seeds are compared with their lone runs."""
    tmp_path, stdout, _ = _finished(serial_smokes, "world_sensitivity")
    with open(tmp_path / "w.json") as f:
        report = json.load(f)
    assert [r["run"] for r in report["rows"]] == ["seed 1", "seed 2"]
    (nudged,) = report["copies"]
    assert nudged["first_diff_step"] is not None and nudged["max_change"] >= 0
    assert [r["run"] for r in report["packed"]] == ["seed 1, packed", "seed 2, packed"]
    base = [r["base"] for r in report["rows"]]
    n = report["rows"][0]["test_images"]["base"]
    p = sum(base) / 200
    assert report["spreads"]["base"]["binomial_se"] == pytest.approx(100 * (p * (1 - p) / n) ** 0.5)
    assert report["spreads"]["base"]["seeds"] == pytest.approx(abs(base[0] - base[1]) / 2 ** 0.5)
    assert "| seed 1, nudge 1 |" in stdout and "sample std over 2 seeds" in stdout


@pytest.mark.slow
def test_determinism_benchmark_smoke(serial_smokes):
    """On the CPU both settings are bit-identical run to run and process to process; without --cpu it stops."""
    tmp_path, stdout, _ = _finished(serial_smokes, "determinism")
    with open(tmp_path / "d.json") as f:
        report = json.load(f)
    assert report["platform"] == "cpu" and [r["setting"] for r in report["rows"]] == ["default", "deterministic"]
    assert all(r["run_to_run"] and r["process_to_process"] and r["equals_first"] for r in report["rows"])
    assert "no GPU: measured on cpu" in stdout and "| deterministic |" in stdout
    _, stdout, _ = _finished(serial_smokes, "determinism_no_gpu")
    assert stdout.startswith("no GPU: nothing to measure")
