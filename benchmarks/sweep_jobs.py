"""A sweep run one group at a time against the same sweep run `--jobs N` at a time, on this host's CPU cores.

    python benchmarks/sweep_jobs.py     # the world's CoOp, 3 packed seeds, WorldScenes-Tint and -Dim, 60 epochs
    python benchmarks/sweep_jobs.py --config configs/ivlp.py --epochs 4 --jobs 2 --json sweep_jobs.json
    python benchmarks/sweep_jobs.py --config configs/coop.py,configs/ivlp.py --args tiny --datasets "" --epochs 1
    # the last one is a smoke (tiny CLIP, synthetic data)

Both sweeps are the same `python -m aple_jax.sweep` command with `--pack-seeds` into two fresh run directories,
timed end to end (start-up, compilation, training, evaluation); the optimizer steps are read from their
results.json. The two run one after the other, so the ratio is taken in one run of this script. Nothing else should
run on the host meanwhile. Each parallel job starts a fresh interpreter and compiles on its own cores, so short runs
(or groups of unequal length) gain less than long ones.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD_DATASETS = "world:WorldScenes-Tint,world:WorldScenes-Dim"   # two groups of the same size (24 base classes)


def timed_sweep(args: argparse.Namespace, jobs: int, runs_dir: str) -> dict[str, float]:
    """Wall seconds and optimizer steps of the sweep with `--jobs jobs`."""
    argv = [sys.executable, "-m", "aple_jax.sweep", "--configs", args.config, "--datasets", args.datasets,
            "--args", args.args, "--seeds", args.seeds, "--pack-seeds", "--override", f"optim.epochs={args.epochs}",
            "--runs-dir", runs_dir, "--jobs", str(jobs)]
    start = time.monotonic()
    subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - start
    steps = sum(json.load(open(f))["steps"] for f in glob.glob(f"{runs_dir}/**/results.json", recursive=True))
    return {"jobs": jobs, "seconds": seconds, "steps": steps, "steps_per_s": steps / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/coop.py", help="comma-separated configs/*.py files")
    ap.add_argument("--datasets", default=WORLD_DATASETS,
                    help="one packed group per config x dataset; \"\": each config's own dataset")
    ap.add_argument("--args", default="world", help="the configs' `:arguments`")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--epochs", type=int, default=60, help="optim.epochs of every run")
    ap.add_argument("--jobs", type=int, default=min(2, len(os.sched_getaffinity(0))))
    ap.add_argument("--json", default="", help="also write the measurements to this file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [timed_sweep(args, jobs, os.path.join(tmp, f"jobs{jobs}")) for jobs in (1, args.jobs)]
    print(f"{args.config} `:{args.args}`, {args.epochs} epochs, seeds {args.seeds} packed, datasets {args.datasets}, "
          f"{len(os.sched_getaffinity(0))} CPU cores\n")
    print("| sweep | wall s | optimizer steps | steps/s |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| --jobs {r['jobs']} | {r['seconds']:.1f} | {r['steps']} | {r['steps_per_s']:.2f} |")
    speedup = rows[0]["seconds"] / rows[1]["seconds"]
    print(f"\n- --jobs {args.jobs} against one group at a time: {speedup:.2f}x the speed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "speedup": speedup}, f, indent=1)


if __name__ == "__main__":
    main()
