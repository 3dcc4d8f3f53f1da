"""The prepared accelerator benchmark runs end to end on tiny shapes, so it cannot rot before a GPU is at hand."""
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
    assert os.path.getsize(tmp_path / "r.json") > 0
