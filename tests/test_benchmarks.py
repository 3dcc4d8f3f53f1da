"""The prepared benchmarks run end to end on tiny shapes, so they cannot rot before a GPU is at hand."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_accelerator_benchmark_smoke(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/accelerator.py", "--smoke", "--json", str(tmp_path / "r.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| train aple/V, C=10, batch 4 |" in out.stdout and "3 seeds packed" in out.stdout
    for ratio in ("APLe V / LV (teacher.images=cached)", "CoCoOp batch 4 / (4 x batch 1)",
                  "IVLP 3 packed seeds / (3 x 1 seed)"):
        assert f"- {ratio}: " in out.stdout, out.stdout
    assert os.path.getsize(tmp_path / "r.json") > 0


@pytest.mark.slow
def test_train_step_benchmark_smoke(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/train_step.py", "--backbone", "tiny", "--methods", "cocoop,aple",
                          "--classes", "5", "--batches", "1,2", "--cocoop-pass", "2", "--dtype", "bfloat16",
                          "--remat", "--repeats", "1", "--budget", "1", "--json", str(tmp_path / "r.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| cocoop | train | 5 | 1 |" in out.stdout and "x of " in out.stdout   # batch 2 against 2 steps at batch 1
    with open(tmp_path / "r.json") as f:
        rows = json.load(f)
    assert [r["batch"] for r in rows] == [1, 2] * 4 and "vs_batch1" in rows[1]   # cocoop, then aple's 3 phases


@pytest.mark.slow
def test_eval_benchmark_smoke(tmp_path):
    """With a loader worker process: its shared memory is released (no resource_tracker warning at exit)."""
    out = subprocess.run([sys.executable, "benchmarks/eval.py", "--backbone", "tiny", "--batch", "8", "--images", "8",
                          "--classes", "4", "--workers", "1", "--passes", "1", "--device-input",
                          "--json", str(tmp_path / "e.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resource_tracker" not in out.stderr and "leaked" not in out.stderr, out.stderr[-3000:]
    for row in ("| bare image forward |", "| evaluate, host-generated input", "| evaluate, device-resident input",
                "| eval step alone, device-resident input"):
        assert row in out.stdout, out.stdout
    assert "evaluation (device-resident input) at" in out.stdout
    with open(tmp_path / "e.json") as f:
        report = json.load(f)
    assert report["num_examples"] == 8 and report["num_classes"] == 4
    assert all(rate > 0 for rate in report["images_per_s"].values())
