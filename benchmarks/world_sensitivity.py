"""How far one run's accuracy moves under perturbations that change nothing but rounding, against the spread over seeds.

    python benchmarks/world_sensitivity.py                     # the README demo (APLe, WorldScenes-Invert): ~10 min
    python benchmarks/world_sensitivity.py --seeds 1,2,3,4,5 --nudges 4 --xla avx2=--xla_cpu_max_isa=AVX2 --packed
    python benchmarks/world_sensitivity.py --config configs/aple.py:demo --override optim.lr=0.001   # another recipe
    python benchmarks/world_sensitivity.py --config configs/coop.py:tiny --seeds 1,2 --nudges 1 --xla "" --no-packed

Every run is the config's real run (`aple_jax.run.run`, one fresh process each) with `log_every=1`, so the loss of
every optimizer step is in its metrics.jsonl. The runs:
- `seed s`: the config with each seed of `--seeds`, run alone;
- `nudge k` (k = 1..N): the first seed with one number of its initial prompts moved by one ulp (element k-1 of the
  first prompt leaf, towards +inf); nothing else changes;
- `python NAME`: the first seed run by another interpreter (`--python j0100=venv/bin/python`: another jax);
- `xla NAME`: the first seed with `XLA_FLAGS` set to the flags given (an equivalent program compiled differently,
  e.g. `--xla_cpu_max_isa=AVX2`: the same arithmetic in other vector widths, so other summation orders);
- `packed`: all seeds of `--seeds` trained together in one program (`pack_seeds`), each compared with its lone run.

For each run it prints base / new accuracy, the largest change against its reference (the lone run of the same seed)
and the first step whose loss differs from the reference's, and where the relative difference of the two losses
first exceeds 1% (how many steps a rounding difference takes to become a different run). Then the sample standard
deviations (n - 1) over seeds and over the perturbed copies of the first seed, and the binomial standard error of
the evaluation, sqrt(p (1 - p) / n), at each test split's size.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


# ------------------------------------------------------------------------------------------------ one run (worker)

def nudge_prompts(tree: Any, element: int) -> Any:
    """`tree` with element `element` of its first leaf (in flattened order) moved by one ulp towards +inf."""
    import jax
    import jax.numpy as jnp

    leaves, treedef = jax.tree.flatten(tree)
    flat = leaves[0].reshape(-1)
    flat = flat.at[element].set(jnp.nextafter(flat[element], jnp.asarray(jnp.inf, flat.dtype)))
    return jax.tree.unflatten(treedef, [flat.reshape(leaves[0].shape)] + leaves[1:])


def run_one(config_arg: str, workdir: str, overrides: list[str], nudge: int) -> None:
    """The config's run in `workdir`, its initial prompts nudged when `nudge` > 0 (element nudge - 1)."""
    from aple_jax import run

    if nudge:
        build = run.build_method

        def build_nudged(*args, **kwargs):
            method = build(*args, **kwargs)
            init = method.init
            method.init = lambda *args: nudge_prompts(init(*args), nudge - 1)
            return method

        run.build_method = build_nudged
    config = load_config(config_arg)
    for item in ["log_every=1", "progress=false", *overrides]:
        key, _, value = item.partition("=")
        config.update_from_flattened_dict({key: parse_value(value)})
    run.run(config, workdir)


def load_config(arg: str) -> Any:
    """`configs/x.py:args` -> its config, as launch.py's --config reads it."""
    path, _, config_arg = arg.partition(":")
    spec = importlib.util.spec_from_file_location("sensitivity_config", os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(config_arg or None)


def parse_value(text: str) -> Any:
    """A Python literal (number, bool, tuple) where it parses as one, else the string."""
    literal = {"true": "True", "false": "False"}.get(text.lower(), text)
    try:
        return ast.literal_eval(literal)
    except (ValueError, SyntaxError):
        return text


# ------------------------------------------------------------------------------------------------------ analysis

def losses(workdir: str) -> dict[int, float]:
    """step -> training loss from a run's metrics.jsonl (training rows only)."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "loss" in row and row.get("phase") != "eval":
                out[row["step"]] = row["loss"]
    return out


def divergence(run: dict[int, float], ref: dict[int, float]) -> tuple[int | None, int | None]:
    """(first step whose loss differs at all, first step whose loss differs by more than 1% relative)."""
    steps = sorted(set(run) & set(ref))
    first = next((s for s in steps if run[s] != ref[s]), None)
    large = next((s for s in steps if abs(run[s] - ref[s]) > 0.01 * abs(ref[s])), None)
    return first, large


def sample_std(values: list[float]) -> float | None:
    """The sample standard deviation (n - 1); None for fewer than two values."""
    return statistics.stdev(values) if len(values) > 1 else None


def binomial_se(p: float, n: int) -> float:
    """Standard error (points) of an accuracy of `p` percent measured on `n` test images."""
    return 100 * math.sqrt(p / 100 * (1 - p / 100) / n) if n else float("nan")


# ------------------------------------------------------------------------------------------------------- driver

def launch(args: argparse.Namespace, workdir: str, *, seed: int | None = None, seeds: str = "", nudge: int = 0,
           xla: str | None = None, python: str = sys.executable) -> None:
    """One run of the config in a fresh process (XLA_FLAGS are read once per process)."""
    arg = args.config + (f",seed={seed}" if seed is not None else "") + (f",seeds={seeds}" if seeds else "")
    if ":" not in args.config:
        arg = args.config + ":" + arg.split(",", 1)[1]
    env = dict(os.environ)
    if xla is not None:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla).strip()
    argv = [python, os.path.abspath(__file__), "--one", workdir, "--config", arg, "--nudge", str(nudge),
            *(x for o in args.override for x in ("--override", o))]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"error: the run in {workdir} failed:\n{proc.stderr[-3000:]}")


def jax_version(python: str) -> str:
    out = subprocess.run([python, "-c", "import jax; print(jax.__version__)"], capture_output=True, text=True)
    return f"jax {out.stdout.strip()}"


def results(workdir: str) -> dict[str, Any]:
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


def row(name: str, workdir: str, ref_dir: str | None) -> dict[str, Any]:
    r = results(workdir)
    out = {"run": name, "base": r["accuracy"].get("base"), "new": r["accuracy"].get("new"),
           "test_images": {k: v["num_examples"] for k, v in r["evals"].items()}}
    if ref_dir is not None and ref_dir != workdir:
        ref = results(ref_dir)
        out["max_change"] = max(abs(r["accuracy"][k] - ref["accuracy"][k]) for k in r["accuracy"])
        out["first_diff_step"], out["diff_1pct_step"] = divergence(losses(workdir), losses(ref_dir))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/aple.py:demo", help="a config with its `:arguments`")
    ap.add_argument("--seeds", default="1,2,3,4,5")
    ap.add_argument("--nudges", type=int, default=4, help="perturbed copies of the first seed, one ulp each")
    ap.add_argument("--xla", action="append", default=None, metavar="NAME=FLAGS",
                    help="a copy of the first seed under these XLA_FLAGS (repeatable; \"\" for none); "
                         "default: devices2=--xla_force_host_platform_device_count=2")
    ap.add_argument("--python", action="append", default=[], metavar="NAME=INTERPRETER",
                    help="a copy of the first seed run by another Python (e.g. a venv with another jax; repeatable)")
    ap.add_argument("--packed", action=argparse.BooleanOptionalAction, default=True,
                    help="also train all seeds packed in one program (default: yes)")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    ap.add_argument("--workdir", default="", help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--json", default="", help="also write the rows and the spreads to this file")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)
    ap.add_argument("--nudge", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return run_one(args.config, args.one, args.override, args.nudge)
    xla = [x for x in (args.xla if args.xla is not None else ["devices2=--xla_force_host_platform_device_count=2"]) if x]
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        measure(args, args.workdir or tmp, seeds, xla)


def measure(args: argparse.Namespace, root: str, seeds: list[int], xla: list[str]) -> None:
    os.makedirs(root, exist_ok=True)
    lone = {s: os.path.join(root, f"seed{s}") for s in seeds}
    for s, d in lone.items():
        launch(args, d, seed=s)
    rows = [row(f"seed {s}", d, None) for s, d in lone.items()]
    ref = lone[seeds[0]]
    copies = []
    for k in range(1, args.nudges + 1):
        d = os.path.join(root, f"nudge{k}")
        launch(args, d, seed=seeds[0], nudge=k)
        copies.append(row(f"seed {seeds[0]}, nudge {k}", d, ref))
    for spec in xla:
        name, _, flags = spec.partition("=")
        d = os.path.join(root, f"xla_{name}")
        launch(args, d, seed=seeds[0], xla=flags)
        copies.append(row(f"seed {seeds[0]}, XLA_FLAGS={flags}", d, ref))
    for spec in args.python:
        name, _, python = spec.partition("=")
        d = os.path.join(root, f"python_{name}")
        launch(args, d, seed=seeds[0], python=python)
        copies.append(row(f"seed {seeds[0]}, {name} ({jax_version(python)})", d, ref))
    packed = []
    if args.packed and len(seeds) > 1:
        d = os.path.join(root, "packed")
        launch(args, d, seeds="+".join(map(str, seeds)))
        packed = [row(f"seed {s}, packed", os.path.join(d, f"seed{s}"), lone[s]) for s in seeds]
    report(args, rows, copies, packed)


def report(args: argparse.Namespace, rows: list[dict], copies: list[dict], packed: list[dict]) -> None:
    import jax
    print(f"{args.config} {' '.join(args.override)}; jax {jax.__version__}, {jax.devices()[0].platform}, "
          f"{len(os.sched_getaffinity(0))} CPU cores\n")
    print("| run | base | new | largest change vs its lone run | first step that differs | first step 1% off |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows + copies + packed:
        change = f"{r['max_change']:.2f}" if "max_change" in r else ""
        print(f"| {r['run']} | {r['base']:.2f} | {r['new']:.2f} | {change} | {r.get('first_diff_step') or ''} "
              f"| {r.get('diff_1pct_step') or ''} |")
    spreads = {}
    for split in ("base", "new"):
        over_seeds = [r[split] for r in rows]
        over_copies = [rows[0][split]] + [r[split] for r in copies]
        spreads[split] = {"seeds": sample_std(over_seeds), "copies": sample_std(over_copies),
                          "seeds_range": max(over_seeds) - min(over_seeds),
                          "copies_range": max(over_copies) - min(over_copies),
                          "binomial_se": binomial_se(statistics.mean(over_seeds), rows[0]["test_images"][split])}
    print()
    for split, s in spreads.items():
        seeds = (f"sample std over {len(rows)} seeds {s['seeds']:.2f} (range {s['seeds_range']:.2f})"
                 if s["seeds"] is not None else "one seed: no spread over seeds")
        copied = (f"over seed {rows[0]['run'].split()[-1]} and its {len(copies)} perturbed copies {s['copies']:.2f} "
                  f"(range {s['copies_range']:.2f})" if s["copies"] is not None else "no perturbed copies")
        print(f"- {split}: {seeds}; {copied}; binomial standard error of the evaluation at the seeds' mean, "
              f"{rows[0]['test_images'][split]} test images: {s['binomial_se']:.2f}")
    if packed:
        print(f"- packed against lone: largest change {max(r['max_change'] for r in packed):.2f} points")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "copies": copies, "packed": packed, "spreads": spreads}, f, indent=1)


if __name__ == "__main__":
    main()
