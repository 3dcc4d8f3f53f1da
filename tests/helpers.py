"""Small builders shared by the tests: tiny configs, random batches, subprocesses run side by side."""
from __future__ import annotations

import json
import subprocess

import jax
import jax.numpy as jnp
import numpy as np

from configs import aple as aple_config
from configs import common


def tiny_config(method: str = "aple", arg: str = "tiny", **overrides):
    """The `:tiny` config of `method` (tiny random CLIP, synthetic data), with dotted-key overrides."""
    if method == "aple":
        c = aple_config.get_config(arg)
    else:
        import importlib
        c = importlib.import_module(f"configs.{method}").get_config(arg)
    c.progress = False
    for dotted, value in overrides.items():
        common._set(c, dotted.replace("__", "."), value)
    return c


def random_batch(batch: int, size: int, num_classes: int, seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.normal(size=(batch, size, size, 3)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, num_classes, size=batch), jnp.int32)}


def finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[str]:
    """Each process's stdout, asserting each exits 0 (its stderr's tail if not); none is left running on failure."""
    try:
        outs = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, stderr[-3000:]
            outs.append(stdout)
        return outs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def result_line(stdout: str) -> dict:
    """The JSON of a worker's `RESULT {...}` line."""
    line = next(l for l in stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])
