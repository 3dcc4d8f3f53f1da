"""Whether a train step gives bit-identical results run to run and process to process, with and without XLA's GPU
determinism flags, and what the flags cost in step time.

    python benchmarks/determinism.py                 # on a GPU: APLe's LV step, ViT-B/16 shapes, C = 100, batch 32
    python benchmarks/determinism.py --method ivlp --phase 0 --classes 1000 --batch 4 --dtype bfloat16
    python benchmarks/determinism.py --cpu --backbone tiny --classes 5 --batch 2 --steps 2 --timed 2   # CPU smoke

Each setting (`--setting NAME=FLAGS`, default: `default` with no extra flags and `deterministic` with
`--xla_gpu_deterministic_ops=true --xla_gpu_exclude_nondeterministic_ops=true`) runs in `--processes` fresh
processes, because XLA reads `XLA_FLAGS` once per process and autotuning picks its kernels per compilation. Each
process compiles the step (random CLIP weights, random batch, fixed seeds), runs the same `--steps` chained steps
twice from the same initial state and takes a SHA-256 of the final prompts, optimizer state and losses, then times
`--timed` further steps (median). Reported per setting: whether the two chains in one process agree (run to run),
whether all processes agree (process to process: a rerun of the same command), whether the setting's result equals
the `default` setting's, and the median step time against `default`'s.

Without a GPU it says so and stops; `--cpu` measures the CPU backend instead (where the --xla_gpu_* flags do
nothing: a check that the script runs, and of CPU run-to-run determinism).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DETERMINISTIC = "--xla_gpu_deterministic_ops=true --xla_gpu_exclude_nondeterministic_ops=true"


def digest(tree: Any) -> str:
    """SHA-256 over the bytes of every leaf of a pytree (fetched to the host), in flattened order."""
    import jax
    import numpy as np

    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(tree)):
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One process: compile, two identical chains of steps, timed steps; returns digests and times."""
    import jax
    import jax.numpy as jnp

    from aple_jax.clip import model as clip_model
    from aple_jax.clip.backbone import DTYPES, Backbone
    from benchmarks.train_step import step_setup

    cfg = clip_model.get_config(args.backbone)
    backbone = Backbone(clip_model.CLIP(cfg, DTYPES[args.dtype]))
    params = clip_model.init_params(cfg)
    config_arg = "tiny" if args.backbone == "tiny" else ""
    step, (state0, *inputs), phase = step_setup(backbone, params, args.method, args.classes, args.batch, args.phase,
                                                config_arg=config_arg)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)   # the step donates its state
    t0 = time.perf_counter()
    compiled = step.lower(state0, *inputs).compile()
    compile_s = time.perf_counter() - t0
    chains = []
    for _ in range(2):
        state, losses = copy(state0), []
        for _ in range(args.steps):
            state, metrics = compiled(state, *inputs)
            losses.append(metrics["loss"])
        chains.append(digest((state.prompts, state.opt_state, losses)))
    times = []
    for _ in range(args.timed):
        t0 = time.perf_counter()
        state, metrics = compiled(state, *inputs)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    return {"platform": jax.devices()[0].platform, "device": jax.devices()[0].device_kind, "phase": phase,
            "jax": jax.__version__, "chains": chains, "compile_s": compile_s, "step_s": statistics.median(times)}


def run_setting(args: argparse.Namespace, flags: str) -> list[dict[str, Any]]:
    """`--processes` fresh workers with `flags` appended to XLA_FLAGS."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    argv = [sys.executable, os.path.abspath(__file__), "--worker", "--backbone", args.backbone, "--method",
            args.method, "--phase", str(args.phase), "--classes", str(args.classes), "--batch", str(args.batch),
            "--dtype", args.dtype, "--steps", str(args.steps), "--timed", str(args.timed)]
    out = []
    for _ in range(args.processes):
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"error: the worker with XLA_FLAGS={env['XLA_FLAGS']!r} failed:\n{proc.stderr[-3000:]}")
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def gpu_present() -> bool:
    import jax
    return any(d.platform == "gpu" for d in jax.devices())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="ViT-B/16")
    ap.add_argument("--method", default="aple")
    ap.add_argument("--phase", type=int, default=2, help="the method's phase index (APLe: 0 L, 1 V, 2 LV)")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--steps", type=int, default=10, help="chained steps whose result is compared")
    ap.add_argument("--timed", type=int, default=20, help="steps timed after the chains (median)")
    ap.add_argument("--processes", type=int, default=2, help="fresh processes per setting")
    ap.add_argument("--setting", action="append", default=None, metavar="NAME=XLA_FLAGS",
                    help=f"repeatable; default: default= and deterministic={DETERMINISTIC}")
    ap.add_argument("--cpu", action="store_true", help="measure on the CPU when there is no GPU")
    ap.add_argument("--json", default="")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if not gpu_present() and not args.cpu:
        print("no GPU: nothing to measure (the --xla_gpu_* flags act on GPUs only); --cpu measures the CPU backend")
        return
    settings = [s.partition("=")[::2] for s in (args.setting or ["default=", f"deterministic={DETERMINISTIC}"])]
    results = {name: run_setting(args, flags) for name, flags in settings}
    report(args, settings, results)


def report(args: argparse.Namespace, settings: list[tuple[str, str]], results: dict[str, list[dict]]) -> None:
    first = next(iter(results.values()))[0]
    if first["platform"] != "gpu":
        print(f"no GPU: measured on {first['platform']} ({first['device']}), where the --xla_gpu_* flags do nothing")
    print(f"{args.method} phase {first['phase']}, {args.backbone} {args.dtype}, C={args.classes}, batch "
          f"{args.batch}, {args.steps} chained steps, {args.processes} processes per setting; jax {first['jax']}, "
          f"{first['device']}\n")
    print("| setting | XLA_FLAGS | run to run | process to process | = default | compile (s) | step (ms) | "
          "vs default |\n|---|---|---|---|---|---:|---:|---:|")
    base = results[settings[0][0]]
    base_step = statistics.median(r["step_s"] for r in base)
    rows = []
    for name, flags in settings:
        rs = results[name]
        row = {"setting": name, "xla_flags": flags,
               "run_to_run": all(r["chains"][0] == r["chains"][1] for r in rs),
               "process_to_process": len({r["chains"][0] for r in rs}) == 1,
               "equals_first": {r["chains"][0] for r in rs} == {r["chains"][0] for r in base},
               "compile_s": statistics.median(r["compile_s"] for r in rs),
               "step_s": statistics.median(r["step_s"] for r in rs)}
        row["vs_first"] = row["step_s"] / base_step
        rows.append(row)
        yes = lambda b: "yes" if b else "**no**"
        print(f"| {name} | `{flags or '(none)'}` | {yes(row['run_to_run'])} | {yes(row['process_to_process'])} | "
              f"{yes(row['equals_first'])} | {row['compile_s']:.1f} | {1000 * row['step_s']:.1f} | "
              f"{row['vs_first']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"platform": first["platform"], "device": first["device"], "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
