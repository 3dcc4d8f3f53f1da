"""Data parallelism: 8 simulated devices and 2 real processes give the single-device results.

Each case runs tests/multidevice_worker.py in a subprocess, since the device count is fixed when JAX starts.
"""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import finish, result_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _worker(*args, devices=1, env=None) -> subprocess.Popen:
    """Starts tests/multidevice_worker.py on `devices` simulated devices (collect with `_results`)."""
    env = dict(env or os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "tests/multidevice_worker.py", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _two_processes(mode) -> list[subprocess.Popen]:
    """Starts the worker as 2 processes of one JAX cluster; process 0 prints the result.

    Run alone, without the session's compilation cache: a process that finds a program cached while the other
    compiles it can wait past the 30 s of Gloo's context setup."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    return [_worker(mode, "--distributed", f"localhost:{port}", "2", str(pid), env=env) for pid in (0, 1)]


def _results(*started) -> list[dict]:
    """The RESULT of each started worker (a 2-process one's from its process 0), all run side by side."""
    groups = [g if isinstance(g, list) else [g] for g in started]
    outs = finish([p for g in groups for p in g])
    firsts = [sum(len(g) for g in groups[:i]) for i in range(len(groups))]
    return [result_line(outs[i]) for i in firsts]


def test_eval_counts_are_exact_on_8_devices_1_device_and_a_numpy_loop():
    eight, one, plain = _results(_worker("eval", devices=8), _worker("eval", "--devices", "1", devices=8),
                                 _worker("numpy"))
    assert eight["device_count"] == 8 and eight["num_examples"] == 35
    assert eight["correct"] == one["correct"] == plain["correct"]
    assert eight["per_class"] == one["per_class"]


def test_predictions_are_the_same_on_8_devices_and_1_device():
    eight, one = _results(_worker("predict", devices=8), _worker("predict", "--devices", "1", devices=8))
    assert eight["device_count"] == 8 and len(eight["probs"]) == 35 and len(eight["probs"][0]) == 5
    np.testing.assert_allclose(eight["probs"], one["probs"], rtol=1e-5, atol=1e-7)
    assert eight["correct"] == one["correct"]


def test_two_processes_evaluate_one_split_between_them():
    (pair,), (single,) = _results(_two_processes("eval")), _results(_worker("eval"))
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
    eight, one = _results(_worker("train", devices=8), _worker("train", "--devices", "1", devices=8))
    assert eight["device_count"] == 8
    _assert_same_prompts(eight, one)
    initial = _initial_train_prompts()
    assert initial.keys() == one.keys() - {"device_count"}
    for key, start in initial.items():   # every leaf trained, far beyond the tolerance of the comparison above
        assert np.linalg.norm(np.asarray(one[key]) - start) > 1e-3 * np.linalg.norm(start), f"{key} did not move"


def test_two_processes_train_together_like_one():
    _assert_same_prompts(*_results(_two_processes("train")), *_results(_worker("train")))


def test_cached_teacher_on_8_devices_and_2_processes_matches_1_device():
    """APLe's phase V with `teacher.images=cached`: the cache is built from sharded batches and indexed by them."""
    one, eight = _results(_worker("train_cached", "--devices", "1", devices=8), _worker("train_cached", devices=8))
    (pair,) = _results(_two_processes("train_cached"))
    _assert_same_prompts(eight, one)
    _assert_same_prompts(pair, one)


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
