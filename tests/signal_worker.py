"""Runs launch.py (or `-m MODULE`) in this process and sends this process a signal right after a training step, so
that the real handlers see it as they would a `kill` or Ctrl-C; prints `DESCENDANTS [pids]`, the process's live
child processes (loader workers) at that moment.

`python tests/signal_worker.py STEP SIGNAL launch.py --config ... --workdir ...`   (SIGNAL: SIGTERM or SIGINT)
"""
from __future__ import annotations

import json
import os
import runpy
import signal
import sys

sys.path.insert(0, ".")

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


def main() -> None:
    step, sig = int(sys.argv[1]), signal.Signals[sys.argv[2]]
    real_advance = MetricWriter.advance

    def advance(self, global_step: int) -> None:
        real_advance(self, global_step)
        if global_step == step:
            print("DESCENDANTS " + json.dumps(descendants(os.getpid())), flush=True)
            os.kill(os.getpid(), sig)

    MetricWriter.advance = advance
    sys.argv = sys.argv[3:]
    if sys.argv[0] == "-m":
        sys.argv = sys.argv[1:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
