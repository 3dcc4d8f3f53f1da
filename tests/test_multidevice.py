"""Data parallelism: 8 simulated devices and 2 real processes give the single-device results.

Each case runs tests/multidevice_worker.py in a subprocess, since the device count is fixed when JAX starts.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _worker(*args, devices=1, timeout=300):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "tests/multidevice_worker.py", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _two_processes(mode):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    cmd = lambda pid: [sys.executable, "tests/multidevice_worker.py", mode, "--distributed", f"localhost:{port}",
                       "2", str(pid)]
    procs = [subprocess.Popen(cmd(pid), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for pid in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    line = next(l for l in outs[0][0].splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_eval_counts_are_exact_on_8_devices_1_device_and_a_numpy_loop():
    eight = _worker("eval", devices=8)
    one = _worker("eval", "--devices", "1", devices=8)
    plain = _worker("numpy")
    assert eight["device_count"] == 8 and eight["num_examples"] == 35
    assert eight["correct"] == one["correct"] == plain["correct"]
    assert eight["per_class"] == one["per_class"]


def test_two_processes_evaluate_one_split_between_them():
    single = _worker("eval")
    pair = _two_processes("eval")
    assert pair["device_count"] == 2
    assert (pair["correct"], pair["num_examples"]) == (single["correct"], single["num_examples"])


def _assert_same_prompts(a, b, rtol=1e-5):
    assert a.keys() - {"device_count"} == b.keys() - {"device_count"}
    for key in a.keys() - {"device_count"}:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        assert np.linalg.norm(x - y) <= rtol * np.linalg.norm(y), key


def _initial_train_prompts() -> dict[str, np.ndarray]:
    """The prompts the worker's training starts from (same builder, in this process)."""
    from aple_jax import prompts as P
    from tests import multidevice_worker
    prompts = multidevice_worker._setup()[2]
    return {k: np.asarray(v) for k, v in P.flatten(prompts).items()}


def test_training_on_8_devices_matches_1_device():
    eight, one = _worker("train", devices=8), _worker("train", "--devices", "1", devices=8)
    assert eight["device_count"] == 8
    _assert_same_prompts(eight, one)
    initial = _initial_train_prompts()
    assert initial.keys() == one.keys() - {"device_count"}
    for key, start in initial.items():   # every leaf trained, far beyond the tolerance of the comparison above
        assert np.linalg.norm(np.asarray(one[key]) - start) > 1e-3 * np.linalg.norm(start), f"{key} did not move"


def test_two_processes_train_together_like_one():
    _assert_same_prompts(_two_processes("train"), _worker("train"))


def test_cached_teacher_on_8_devices_and_2_processes_matches_1_device():
    """APLe's phase V with `teacher.images=cached`: the cache is built from sharded batches and indexed by them."""
    one = _worker("train_cached", "--devices", "1", devices=8)
    _assert_same_prompts(_worker("train_cached", devices=8), one)
    _assert_same_prompts(_two_processes("train_cached"), one)


def test_distributed_start_needs_a_coordinator_or_auto(monkeypatch):
    """No coordinator: a single process; `auto`: JAX's own cluster detection (initialize() without arguments)."""
    import jax

    from aple_jax import sharding

    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    sharding.maybe_initialize_distributed()
    assert calls == []
    sharding.maybe_initialize_distributed(auto=True)
    assert calls == [{}]   # (the explicit start is exercised for real by the two-process tests above)
