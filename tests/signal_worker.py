"""Runs launch.py (or `-m MODULE`) in this process and sends this process a signal right after a training step, so
that the real handlers see it as they would a `kill` or Ctrl-C; prints `DESCENDANTS [pids]`, the process's live
child processes (loader workers) at that moment.

`python tests/signal_worker.py STEP SIGNAL launch.py --config ... --workdir ...`   (SIGNAL: SIGTERM or SIGINT)
STEP `eval`: at the first batch of the first evaluation instead.
"""
from __future__ import annotations

import json
import os
import runpy
import signal
import sys

sys.path.insert(0, ".")

from aple_jax import evaluate  # noqa: E402
from aple_jax.metrics import MetricWriter  # noqa: E402


def descendants(pid: int) -> list[int]:
    """The live processes below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        out += below
        todo += below
    return out


def send(sig: signal.Signals) -> None:
    print("DESCENDANTS " + json.dumps(descendants(os.getpid())), flush=True)
    os.kill(os.getpid(), sig)


def signal_in_evaluation(sig: signal.Signals) -> None:
    real_evaluate = evaluate.evaluate_batches

    def batches_then_signal(batches):   # workers of a small split end with it: the signal comes at its first
        for batch in batches:
            send(sig)
            yield batch

    evaluate.evaluate_batches = lambda *args, **kw: real_evaluate(*args[:5], batches_then_signal(args[5]), **kw)


def signal_after_step(step: int, sig: signal.Signals) -> None:
    real_advance = MetricWriter.advance

    def advance(self, global_step: int) -> None:
        real_advance(self, global_step)
        if global_step == step:
            send(sig)

    MetricWriter.advance = advance


def main() -> None:
    sig = signal.Signals[sys.argv[2]]
    if sys.argv[1] == "eval":
        signal_in_evaluation(sig)
    else:
        signal_after_step(int(sys.argv[1]), sig)
    sys.argv = sys.argv[3:]
    if sys.argv[0] == "-m":
        sys.argv = sys.argv[1:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
