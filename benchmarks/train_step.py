"""Train-step time and memory per method and APLe phase, on ViT-B/16 shapes with random weights.

    python benchmarks/train_step.py                       # all methods, C = 10, 100, 1000 (long on 2 CPU cores)
    python benchmarks/train_step.py --methods aple,ivlp --classes 10,100 --batches 4
    python benchmarks/train_step.py --methods ivlp --classes 100 --pack 3    # 3 packed seeds vs 3 separate steps
    python benchmarks/train_step.py --methods cocoop --classes 100,1000 --batches 1,4 --dtype bfloat16 --remat
    python benchmarks/train_step.py --methods aple --classes 1000 --teacher-images cached   # APLe's teacher cache
    python benchmarks/train_step.py --interleave --methods maple,mma --classes 100   # methods take turns step by step
    python benchmarks/train_step.py --interleave --classes 1000 --repeats 0   # memory and XLA FLOPs only, nothing run
    python benchmarks/train_step.py --lora-overhead --classes 100      # what CLIP-LoRA's x-path adds to a step

With batch 1 and B in `--batches`, the last column compares one step at batch B with B steps at batch 1 (below 1x:
batching pays). `--cocoop-pass` sets CoCoOp's `cocoop.prompts_per_pass` (prompts per text-tower pass; 0: all at once).

`--lora-overhead` times, taking turns, CLIP-LoRA's recipe step (q, k, v of every block of both towers), the same
without dropout, the same with LoRA on one matrix per tower (block 0's query: the whole backward through both
towers, nothing else touched), one merge pass `W + s B A` over the recipe's touched matrices and one pass of those
matrices over a step's activations (what merging adds to each step's backward: the gradient of every merged matrix),
with XLA's FLOP and byte counts of each: the x-path's extra cost beside the price of merging.

Memory is XLA's own account of the compiled step (arguments + outputs + temporaries - aliased), the peak the
program needs on any backend; time is the median wall time of jitted steps after a warm-up step. The batch sizes of
one row take turns step by step, so their ratio is not skewed by the machine's speed drifting during the run.
"""
from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from typing import Any

import jax
import numpy as np

sys.path.insert(0, ".")

from aple_jax import prompts as P  # noqa: E402
from aple_jax import sharding, train  # noqa: E402
from aple_jax.clip import model as clip_model  # noqa: E402
from aple_jax.clip.backbone import DTYPES, Backbone  # noqa: E402
from aple_jax.clip.tokenizer import Tokenizer  # noqa: E402
from aple_jax.methods import build_method  # noqa: E402
from aple_jax.methods.twostage import TOWER_PATHS  # noqa: E402

METHODS = ("aple", "ivlp", "coop", "kgcoop", "cocoop", "maple", "promptsrc", "clip_lora", "mma", "twostage")


def step_setup(backbone: Backbone, params, name: str, classes: int, batch: int, phase_index: int, pack: int = 1,
               config_arg: str = "", overrides: dict[str, Any] | None = None):
    """(jitted step, args) for one phase of one method with `classes` class prompts (`pack` seeds in one step)."""
    config = importlib.import_module(f"configs.{name}").get_config(config_arg)
    with config.ignore_type():   # e.g. lora.layers: "all" or a list of blocks
        config.update_from_flattened_dict(overrides or {})
    method = build_method(config, backbone, Tokenizer.builtin_tiny())
    classnames = [f"class {i}" for i in range(classes)]
    prompts = method.init(jax.random.key(0), params, classnames)
    phase = method.phases()[phase_index]
    plan = train.plan_phase(method, phase, prompts)
    tx = train.make_optimizer(phase, plan.selection.labels(prompts), 100, config.optim)
    texts = method.class_texts(params, classnames)
    teacher = method.text_features({}, params, texts, ()) if plan.needs_teacher_text else None
    rng = np.random.default_rng(0)
    num_images = 16 * classes   # a 16-shot training set, for the teacher's per-image cache
    teacher_image = (jax.numpy.asarray(rng.normal(size=(num_images, backbone.cfg.embed_dim)), jax.numpy.float32)
                     if plan.teacher_image_cached else None)
    consts = train.phase_constants(method, plan, prompts, params, texts, teacher, teacher_image)
    size = backbone.cfg.image_resolution
    batch_arrays = {"image": jax.numpy.asarray(rng.normal(size=(batch, size, size, 3)), jax.numpy.float32),
                    "label": jax.numpy.asarray(rng.integers(0, classes, batch), jax.numpy.int32),
                    "index": jax.numpy.asarray(rng.integers(0, num_images, batch), jax.numpy.int32)}
    state = train.init_state(prompts, tx, phase.gpa is not None, jax.random.key(1) if method.needs_rng else None)
    if pack > 1:
        state, consts, batch_arrays = (train.pack([x] * pack) for x in (state, consts, batch_arrays))
    # Committed, replicated placement as in the trainer, so the warm-up call compiles the program that is timed.
    state, consts, batch_arrays = sharding.replicate((state, consts, batch_arrays), sharding.make_mesh())
    return train.make_train_step(method, plan, tx, packed=pack > 1), (state, params, consts, batch_arrays), phase.name


def measure_interleaved(setups: list[tuple[Any, tuple]], repeats: int, budget_s: float) -> list[dict[str, float]]:
    """Peak memory, XLA's FLOP and byte counts and median step time of each (step, args); the programs take turns,
    one step each per round, so that a drift in the machine's speed (a shared host) cancels out of the ratios
    between them. Each jitted step maps (state, *rest) to (state, metrics) and is compiled once; with `repeats` 0
    none runs (memory and counts only)."""
    out, states, programs = [], [], []
    for step, args in setups:
        compiled = step.lower(*args).compile()
        programs.append(compiled)
        mem = compiled.memory_analysis()
        peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                - mem.alias_size_in_bytes)
        cost = compiled.cost_analysis() or {}
        cost = cost[0] if isinstance(cost, list) else cost
        if repeats:
            state, _ = compiled(args[0], *args[1:])   # warm-up
            states.append(jax.block_until_ready(state))
        out.append({"peak_gb": peak / 1e9, "gflops": cost.get("flops", float("nan")) / 1e9,
                    "gbytes": cost.get("bytes accessed", float("nan")) / 1e9})
    times: list[list[float]] = [[] for _ in setups]
    start = time.perf_counter()
    while len(times[0]) < repeats and (not times[0] or time.perf_counter() - start < budget_s):
        for i, (compiled, (_, args)) in enumerate(zip(programs, setups)):
            t0 = time.perf_counter()
            states[i], metrics = compiled(states[i], *args[1:])
            jax.block_until_ready(metrics)
            times[i].append(time.perf_counter() - t0)
    return [{"step_s": statistics.median(t) if t else float("nan"), **o, "runs": len(t)}
            for t, o in zip(times, out)]


LORA_MINIMAL = {"lora.layers": [0], "lora.matrices": ("query",)}   # one matrix per tower, at the bottom


def merge_pass(backbone: Backbone, params, name: str) -> tuple[Any, tuple]:
    """(jitted merge, args) shaped like a step: (frozen, factors) -> (`W + s B A` for every matrix the recipe of
    `name` touches, as a merged LoRA computes in each step, one of its entries)."""
    config = importlib.import_module(f"configs.{name}").get_config("")
    method = build_method(config, backbone, Tokenizer.builtin_tiny())
    prompts = method.init(jax.random.key(0), params, [])
    flat = P.flatten(params)
    touched = [(f"{TOWER_PATHS[tower]}/resblocks.{block.removeprefix('block_')}/attn/{matrix}/kernel", ab)
               for tower, blocks in prompts.items() for block, matrices in blocks.items()
               for matrix, ab in matrices.items()]
    frozen, factors = [flat[path] for path, _ in touched], [ab for _, ab in touched]

    @jax.jit
    def merge(frozen, factors):
        merged = [w + method.scale * (f["b"] @ f["a"]).T.reshape(w.shape) for w, f in zip(frozen, factors)]
        return merged, merged[-1].ravel()[0]

    return merge, (frozen, factors)


def touched_pass(backbone: Backbone, params, classes: int, batch: int, name: str) -> tuple[Any, tuple]:
    """(jitted pass, args): every matrix the recipe of `name` touches applied once to its tower's activations of one
    step (batch x image tokens for the vision tower, C x the cut text length for the text tower). This is the unit of
    the bound: a merged LoRA's backward needs the gradient `x^T dy` of each merged matrix, one such pass more."""
    config = importlib.import_module(f"configs.{name}").get_config("")
    method = build_method(config, backbone, Tokenizer.builtin_tiny())
    classnames = [f"class {i}" for i in range(classes)]
    texts = method.class_texts(params, classnames)
    cfg = backbone.cfg
    tokens = {"text": classes * texts.embeds.shape[1],
              "vision": batch * (1 + (cfg.image_resolution // cfg.vision_patch_size) ** 2)}
    flat = P.flatten(method.init(jax.random.key(0), params, []))
    frozen = P.flatten(params)
    rng = np.random.default_rng(0)
    kernels, towers = [], []
    for path in sorted({p.rsplit("/", 1)[0] for p in flat}):   # <tower>/block_i/<matrix>
        tower, block, matrix = path.split("/")
        w = frozen[f"{TOWER_PATHS[tower]}/resblocks.{block.removeprefix('block_')}/attn/{matrix}/kernel"]
        kernels.append(w.reshape(w.shape[0], -1))
        towers.append(tower)
    acts = {t: jax.numpy.asarray(rng.normal(size=(n, kernels[towers.index(t)].shape[0])), jax.numpy.float32)
            for t, n in tokens.items() if t in towers}

    @jax.jit
    def one_pass(acts, kernels):   # (state, metrics) as a step: the activations pass through, the products out
        return acts, [acts[t] @ w for t, w in zip(towers, kernels)]

    return one_pass, (acts, kernels)


def lora_overhead(backbone: Backbone, params, classes: int, batch: int, repeats: int, budget: float) -> None:
    """CLIP-LoRA's step beside the same step without dropout, with LoRA on one matrix per tower, one merge pass
    over its touched matrices and one pass of them over a step's activations: time, peak memory and XLA's counts."""
    variants = [("recipe: q, k, v of every block, both towers", {}), ("recipe, dropout 0", {"lora.dropout": 0.0}),
                ("block 0 query per tower only", LORA_MINIMAL), ("block 0 query, dropout 0",
                                                                 {**LORA_MINIMAL, "lora.dropout": 0.0})]
    setups = [step_setup(backbone, params, "clip_lora", classes, batch, 0, overrides=o)[:2] for _, o in variants]
    merge, merge_args = merge_pass(backbone, params, "clip_lora")
    extra = [(merge, merge_args), touched_pass(backbone, params, classes, batch, "clip_lora")]
    results = measure_interleaved(setups + extra, repeats, budget)
    touched = sum(w.size for w in merge_args[0])
    print(f"\nCLIP-LoRA at C = {classes}, batch {batch}; the recipe touches {len(merge_args[0])} matrices, "
          f"{touched / 1e6:.1f} M weights ({4 * touched / 1e6:.0f} MB in fp32)\n")
    print("| step | time (s) | peak memory (GB) | XLA GFLOP | XLA GB accessed |\n|---|---:|---:|---:|---:|")
    labels = [label for label, _ in variants] + ["one merge pass W + s B A over the touched matrices",
                                                 "one pass of the touched matrices over a step's activations"]
    for label, r in zip(labels, results):
        print(f"| {label} | {r['step_s']:.3f} | {r['peak_gb']:.2f} | {r['gflops']:.1f} | {r['gbytes']:.2f} |",
              flush=True)
    recipe, minimal, one_pass = results[0], results[2], results[-1]
    x_path = {k: recipe[k] - minimal[k] for k in ("gflops", "step_s")}
    print(f"\nThe recipe's x-path beyond block 0's query per tower (the difference of those two steps): "
          f"{x_path['gflops']:.1f} GFLOP and {x_path['step_s']:.2f} s per step, against one pass of the touched "
          f"matrices: {one_pass['gflops']:.1f} GFLOP and {one_pass['step_s']:.2f} s (ratio "
          f"{x_path['gflops'] / one_pass['gflops']:.2f} by FLOPs, {x_path['step_s'] / one_pass['step_s']:.2f} by time)",
          flush=True)


def report_row(name: str, phase: str, classes: int, batches: list[int], pack: int,
               results: dict[tuple[int, int], dict[str, float]]) -> list[dict[str, Any]]:
    """Prints one method/phase/C row per batch size (and packed seeds); returns the JSON rows."""
    rows = []
    single = results.get((1, 1), {}).get("step_s")   # the batch-1 step time, when measured
    for batch in batches:
        r = results[(batch, 1)]
        vs = ""
        if single is not None and batch > 1:
            r["vs_batch1"] = r["step_s"] / (batch * single)
            vs = f"{r['vs_batch1']:.2f}x of {batch * single:.3f} s"
        rows.append({"method": name, "phase": phase, "classes": classes, "batch": batch, **r})
        print(f"| {name} | {phase} | {classes} | {batch} | {r['step_s']:.3f} | {r['peak_gb']:.2f} | "
              f"{r['gflops']:.0f} | {vs} |", flush=True)
        if pack > 1:
            p = results[(batch, pack)]
            rows.append({"method": name, "phase": phase, "classes": classes, "batch": batch, "packed": pack, **p})
            print(f"| {name} | {phase}, {pack} seeds packed: {p['step_s'] / pack:.3f} s per seed "
                  f"({r['step_s'] / (p['step_s'] / pack):.2f}x) | {classes} | {batch} | {p['step_s']:.3f} | "
                  f"{p['peak_gb']:.2f} | |", flush=True)
    return rows


def interleaved_methods(backbone: Backbone, params, args: argparse.Namespace, batch: int,
                        config_arg: str) -> list[dict[str, Any]]:
    """Every method and phase at each C, taking turns step by step, so that the ratios between methods are not
    skewed by a shared machine's speed drifting during the run."""
    rows = []
    overrides = {"teacher.images": args.teacher_images}
    for classes in map(int, args.classes.split(",")):
        setups = []
        for name in args.methods.split(","):
            config = importlib.import_module(f"configs.{name}").get_config(config_arg)
            for index in range(len(build_method(config, backbone, Tokenizer.builtin_tiny()).phases())):
                setups.append((name, step_setup(backbone, params, name, classes, batch, index, 1, config_arg,
                                                overrides)))
        results = measure_interleaved([s[:2] for _, s in setups], args.repeats, args.budget)
        for (name, setup), r in zip(setups, results):
            rows += report_row(name, setup[2], classes, [batch], 1, {(batch, 1): r})
        del setups
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--classes", default="10,100,1000")
    ap.add_argument("--batches", "--batch", default="4", help="comma list of batch sizes, e.g. 1,4")
    ap.add_argument("--backbone", default="ViT-B/16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget", type=float, default=20.0, help="seconds of timed steps per row at most")
    ap.add_argument("--pack", type=int, default=1, help="also time this many seeds packed into one step")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="backbone compute dtype")
    ap.add_argument("--remat", action="store_true", help="rematerialise the backbone's blocks")
    ap.add_argument("--cocoop-pass", type=int, default=None,
                    help="cocoop.prompts_per_pass (default: the config's)")
    ap.add_argument("--teacher-images", default="augmented", choices=("augmented", "cached"),
                    help="teacher.images: the zero-shot teacher's image forward per step, or a per-image cache")
    ap.add_argument("--lora-overhead", action="store_true",
                    help="CLIP-LoRA's x-path against one matrix per tower and a merge pass (first of --classes/--batches)")
    ap.add_argument("--interleave", action="store_true",
                    help="all methods and phases of one C take turns step by step (first of --batches)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    cfg = clip_model.get_config(args.backbone)
    backbone = Backbone(clip_model.CLIP(cfg, DTYPES[args.dtype], args.remat))
    params = clip_model.init_params(cfg)
    batches = sorted(set(map(int, args.batches.split(","))))
    config_arg = "tiny" if args.backbone == "tiny" else ""   # the tiny preset keeps prompt depths within its towers
    if args.lora_overhead:
        lora_overhead(backbone, params, int(args.classes.split(",")[0]), batches[0], args.repeats, args.budget)
        return
    rows = []
    print(f"{args.backbone}, {args.dtype}{', remat' if args.remat else ''}, batches {batches}, "
          f"teacher images {args.teacher_images}, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s)\n")
    print("| method | phase | C | batch | step (s) | peak memory (GB) | XLA GFLOP | vs B steps at batch 1 |\n"
          "|---|---|---|---|---|---|---|---|")
    if args.interleave:
        rows = interleaved_methods(backbone, params, args, batches[0], config_arg)
    for name in [] if args.interleave else args.methods.split(","):
        config = importlib.import_module(f"configs.{name}").get_config(config_arg)
        n_phases = len(build_method(config, backbone, Tokenizer.builtin_tiny()).phases())
        chunked = name == "cocoop" and args.cocoop_pass is not None
        overrides = {"cocoop.prompts_per_pass": args.cocoop_pass} if chunked else {}
        overrides["teacher.images"] = args.teacher_images
        for classes in map(int, args.classes.split(",")):
            for index in range(n_phases):
                keys = [(batch, k) for batch in batches for k in ((1, args.pack) if args.pack > 1 else (1,))]
                setups = [step_setup(backbone, params, name, classes, batch, index, k, config_arg, overrides)
                          for batch, k in keys]
                phase = setups[0][2]
                results = dict(zip(keys, measure_interleaved([s[:2] for s in setups], args.repeats, args.budget)))
                del setups
                rows += report_row(name, phase, classes, batches, args.pack, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
