"""One prepared command for whatever accelerator is present: backbone, train-step and evaluation throughput in bf16
with model FLOP utilisation (XLA cost-analysis FLOPs / time / the device's peak).

    python benchmarks/accelerator.py             # ViT-B/16, about 5 minutes on one GPU
    python benchmarks/accelerator.py --smoke     # tiny shapes, seconds on a CPU (runs in CI so it cannot rot)

Prints one Markdown table; `--json PATH` also writes the rows.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, ".")

from aple_jax import evaluate, sharding  # noqa: E402
from aple_jax.clip import model as clip_model  # noqa: E402
from aple_jax.clip.backbone import Backbone  # noqa: E402
from aple_jax.clip.tokenizer import Tokenizer  # noqa: E402
from aple_jax.methods import build_method  # noqa: E402
from benchmarks.train_step import step_setup  # noqa: E402
from configs import ivlp as ivlp_config  # noqa: E402

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets (no sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "V100": 125e12,
             "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12}


def device_peak() -> tuple[float, str]:
    """(peak FLOP/s of one device, where the number comes from): the data sheet, else a measured matmul."""
    kind = jax.devices()[0].device_kind
    for name, peak in PEAK_BF16.items():
        if name.lower() in kind.lower():
            return peak, f"{kind} data sheet"
    n = 2048 if jax.devices()[0].platform != "cpu" else 512
    a = jnp.ones((n, n), jnp.bfloat16)
    f = jax.jit(lambda x: x @ x)
    seconds = timed(lambda: f(a), 3)
    return 2 * n ** 3 / seconds, f"measured {n}x{n} bf16 matmul on {kind}"


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of `fn()` after one warm-up call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def flops_of(jitted, *args) -> float:
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0))


def row(name: str, seconds: float, items: int, unit: str, flops: float, peak: float) -> dict[str, Any]:
    n_dev = jax.device_count()
    return {"benchmark": name, "seconds": seconds, "throughput": items / seconds, "unit": unit,
            "tflops": flops / seconds / 1e12, "mfu": flops / seconds / (peak * n_dev)}


def backbone_rows(backbone: Backbone, params, batch: int, classes: int, repeats: int, peak: float) -> list[dict]:
    cfg = backbone.cfg
    images = jnp.zeros((batch, cfg.image_resolution, cfg.image_resolution, 3), jnp.float32)
    image_fn = jax.jit(backbone.image)
    out = [row(f"image forward, batch {batch}", timed(lambda: image_fn(params, images), repeats), batch,
               "images/s", flops_of(image_fn, params, images), peak)]
    embeds = jnp.zeros((classes, 16, cfg.text_width), jnp.float32)
    eot = jnp.full((classes,), 15, jnp.int32)
    text_fn = jax.jit(backbone.text)
    out.append(row(f"text forward, {classes} prompts of 16 tokens", timed(lambda: text_fn(params, embeds, eot),
                                                                         repeats),
                   classes, "prompts/s", flops_of(text_fn, params, embeds, eot), peak))
    return out


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    method: str
    phase_index: int
    classes: int
    pack: int = 1
    batch: int = 4
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def suffix(self) -> str:
        return "".join(f", {k}={v}" for k, v in self.overrides)


def train_rows(backbone: Backbone, params, specs: list[TrainSpec], repeats: int, peak: float,
               config_arg: str) -> list[dict]:
    out = []
    for spec in specs:
        step, args, phase = step_setup(backbone, params, spec.method, spec.classes, spec.batch, spec.phase_index,
                                       spec.pack, config_arg, dict(spec.overrides))
        flops = flops_of(step, *args)
        state, rest = args[0], args[1:]
        holder = {"state": state}

        def one_step():
            holder["state"], metrics = step(holder["state"], *rest)
            return metrics

        seconds = timed(one_step, repeats)
        label = (f"train {spec.method}/{phase}, C={spec.classes}, batch {spec.batch}"
                 + (f", {spec.pack} seeds packed" if spec.pack > 1 else "") + spec.suffix)
        out.append(row(label, seconds, spec.batch * spec.pack, "images/s", flops, peak))
    return out


def ratio_lines(rows: list[dict], classes: int) -> list[str]:
    """The ratios the issues set targets for, from the rows of this one run."""
    t = {r["benchmark"]: r["seconds"] for r in rows}
    c10 = classes // 10
    pairs = [("APLe V / LV (augmented teacher)", f"train aple/V, C={classes}, batch 4", f"train aple/LV, C={classes}, batch 4", 1),
             ("APLe V / LV (teacher.images=cached)", f"train aple/V, C={classes}, batch 4, teacher.images=cached",
              f"train aple/LV, C={classes}, batch 4", 1),
             ("CoCoOp batch 4 / (4 x batch 1)", f"train cocoop/train, C={c10}, batch 4",
              f"train cocoop/train, C={c10}, batch 1", 4),
             ("IVLP 3 packed seeds / (3 x 1 seed)", f"train ivlp/train, C={classes}, batch 4, 3 seeds packed",
              f"train ivlp/train, C={classes}, batch 4", 3)]
    return [f"- {name}: {t[a] / (k * t[b]):.3f}" for name, a, b, k in pairs if a in t and b in t]


def eval_row(backbone: Backbone, params, batch: int, classes: int, repeats: int, peak: float,
             config_arg: str) -> dict:
    method = build_method(ivlp_config.get_config(config_arg), backbone, Tokenizer.builtin_tiny())
    prompts = method.init(jax.random.key(0), params)
    mesh = sharding.make_mesh()
    text = method.eval_text_features(prompts, params, [f"class {i}" for i in range(classes)], "{}")
    cfg = backbone.cfg
    batch_arrays = sharding.shard_batch({"image": np.zeros((batch, cfg.image_resolution, cfg.image_resolution, 3),
                                                           np.float32),
                                         "label": np.zeros(batch, np.int32), "mask": np.ones(batch, bool)}, mesh)
    step = evaluate.make_eval_step(method)
    seconds = timed(lambda: step(prompts, params, text, batch_arrays), repeats)
    return row(f"evaluate ivlp, batch {batch}, C={classes}", seconds, batch, "images/s",
               flops_of(step, prompts, params, text, batch_arrays), peak)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes: a quick check that everything runs")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    cfg = clip_model.get_config("tiny" if args.smoke else "ViT-B/16")
    backbone = Backbone(clip_model.CLIP(cfg, dtype))
    params = sharding.replicate(clip_model.init_params(cfg), sharding.make_mesh())
    peak, peak_source = device_peak()
    batch, classes, repeats = (8, 10, 2) if args.smoke else (256, 1000, 10)
    specs = [TrainSpec("aple", i, classes) for i in range(3)]
    specs += [TrainSpec("aple", 1, classes, overrides=(("teacher.images", "cached"),)),
              TrainSpec("ivlp", 0, classes), TrainSpec("maple", 0, classes),
              TrainSpec("cocoop", 0, classes // 10, batch=1), TrainSpec("cocoop", 0, classes // 10),
              TrainSpec("ivlp", 0, classes, pack=3)]
    rows = backbone_rows(backbone, params, batch, classes, repeats, peak)
    config_arg = "tiny" if args.smoke else ""   # the tiny preset keeps prompt depths within the tiny towers
    rows += train_rows(backbone, params, specs, repeats if args.smoke else 3, peak, config_arg)
    rows.append(eval_row(backbone, params, batch, classes, repeats, peak, config_arg))
    print(f"{'tiny' if args.smoke else 'ViT-B/16'} CLIP, {args.dtype}, {jax.device_count()} x "
          f"{jax.devices()[0].device_kind}; peak {peak / 1e12:.1f} TFLOP/s per device ({peak_source})\n")
    print("| benchmark | time (ms) | throughput | TFLOP/s | MFU |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['benchmark']} | {1e3 * r['seconds']:.2f} | {r['throughput']:.1f} {r['unit']} | "
              f"{r['tflops']:.2f} | {100 * r['mfu']:.1f}% |")
    print("\n" + "\n".join(ratio_lines(rows, classes)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peak": peak, "peak_source": peak_source, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
