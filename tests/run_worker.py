"""Runs `aple_jax.run.run` in a subprocess (device count and processes are fixed when JAX starts).

`python tests/run_worker.py WORKDIR METHOD [--set key=value ...] [--stop STEP] [--distributed COORD NPROC PID]
    [--sigterm-at STEP [--signal SIGINT]]`

Prints `RESULT {json}`: the device count, the data axis size and the final prompts (or `"preempted": true`, or
`"interrupted": STEP` and the exit status of a run stopped by a signal). `--sigterm-at`: this process sends itself
SIGTERM (or `--signal`) after that training step, and from then on each step waits STEP_WAIT_S (JAX's preemption service notices
a signal within a second, and the processes then agree on a step a few steps on).
"""
from __future__ import annotations

import argparse
import ast
import io
import json
import os
import signal
import sys
import time

import numpy as np

sys.path.insert(0, ".")

from aple_jax import paths, train  # noqa: E402
from aple_jax.errors import Interrupted  # noqa: E402
from aple_jax.metrics import MetricWriter  # noqa: E402
from aple_jax.prompt_files import PROMPTS_META_KEY  # noqa: E402
from aple_jax.run import run  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


STEP_WAIT_S = 0.3


def signal_at(step: int, sig: signal.Signals) -> None:
    real_advance = MetricWriter.advance

    def advance(self, global_step: int) -> None:
        real_advance(self, global_step)
        if global_step == step:
            os.kill(os.getpid(), sig)
        if global_step >= step:
            time.sleep(STEP_WAIT_S)

    MetricWriter.advance = advance


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("method")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--stop", type=int)
    parser.add_argument("--distributed", nargs=3)
    parser.add_argument("--sigterm-at", type=int)
    parser.add_argument("--signal", default="SIGTERM")
    a = parser.parse_args()
    if a.sigterm_at is not None:
        signal_at(a.sigterm_at, signal.Signals[a.signal])
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
    except Interrupted as e:
        print("RESULT " + json.dumps({"interrupted": e.step, "exit_status": e.exit_status}), flush=True)
        sys.exit(e.exit_status)
    with np.load(io.BytesIO(paths.join(a.workdir, "prompts.npz").read_bytes())) as f:
        prompts = {k: f[k].tolist() for k in f.files if k != PROMPTS_META_KEY}
    print("RESULT " + json.dumps({"device_count": jax.device_count(), "num_devices": results["num_devices"],
                                  "prompts": prompts}), flush=True)


if __name__ == "__main__":
    main()
