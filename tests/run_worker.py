"""Runs `aple_jax.run.run` in a subprocess (device count and processes are fixed when JAX starts).

`python tests/run_worker.py WORKDIR METHOD [--set key=value ...] [--stop STEP] [--distributed COORD NPROC PID]`

Prints `RESULT {json}`: the device count, the data axis size and the final prompts (or `"preempted": true`).
"""
from __future__ import annotations

import argparse
import ast
import io
import json
import sys

import numpy as np

sys.path.insert(0, ".")

from aple_jax import paths, train  # noqa: E402
from aple_jax.prompt_files import PROMPTS_META_KEY  # noqa: E402
from aple_jax.run import run  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("method")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--stop", type=int)
    parser.add_argument("--distributed", nargs=3)
    a = parser.parse_args()
    overrides = {k.replace(".", "__"): _value(v) for k, v in (s.split("=", 1) for s in a.set)}
    if a.distributed:
        overrides.update(distributed__coordinator=a.distributed[0], distributed__num_processes=int(a.distributed[1]),
                         distributed__process_id=int(a.distributed[2]))
    config = tiny_config(a.method, **overrides)
    import jax
    try:
        results = run(config, a.workdir, stop_at_step=a.stop)
    except train.Preempted:
        print("RESULT " + json.dumps({"preempted": True}), flush=True)
        return
    with np.load(io.BytesIO(paths.join(a.workdir, "prompts.npz").read_bytes())) as f:
        prompts = {k: f[k].tolist() for k in f.files if k != PROMPTS_META_KEY}
    print("RESULT " + json.dumps({"device_count": jax.device_count(), "num_devices": results["num_devices"],
                                  "prompts": prompts}), flush=True)


if __name__ == "__main__":
    main()
