"""Evaluation throughput against the bare image forward, on ViT-B/16 shapes with random weights.

    python benchmarks/eval.py                    # all local devices
    python benchmarks/eval.py --device-input     # also evaluate over batches built once and kept on the devices
    python benchmarks/eval.py --simulate 8       # 8 simulated CPU devices (re-runs itself with XLA_FLAGS)
    python benchmarks/eval.py --backbone tiny --batch 8 --images 16 --classes 4 --workers 0 --device-input  # smoke

`bare forward` is the jitted image tower alone on a device-resident batch. `evaluate` is the whole path: the grain
loader *generates* the synthetic images on the host (procedural rendering, then the resize/crop/normalize
transforms), shards the batches, and `evaluate_batches` runs the cached class text features and masked counts. On
an accelerator that path measures the host's image generation, not the evaluation. `--device-input` therefore
builds the sharded batches once (the same padded, masked batches) and times `evaluate_batches` over them: the
evaluation itself (prompted image tower, class text features, masked counts) against the bare forward, the number
the target "evaluation at >= 80% of the bare image forward" is about. Every row is printed with its ratio to the
bare forward.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np

sys.path.insert(0, ".")

from aple_jax import evaluate, sharding  # noqa: E402
from aple_jax.clip import model as clip_model  # noqa: E402
from aple_jax.clip.backbone import Backbone  # noqa: E402
from aple_jax.clip.tokenizer import Tokenizer  # noqa: E402
from aple_jax.data import build_dataset  # noqa: E402
from aple_jax.data.pipeline import eval_loader  # noqa: E402
from aple_jax.methods import build_method  # noqa: E402
from configs import ivlp as ivlp_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--simulate", type=int, default=0, help="re-run with this many simulated CPU devices")
    ap.add_argument("--backbone", default="ViT-B/16")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device-input", action="store_true",
                    help="also time evaluate over sharded batches built once, without host image generation")
    ap.add_argument("--passes", type=int, default=3,
                    help="passes over the images timed for the device-resident rows (bare and --device-input)")
    ap.add_argument("--json", default="", help="also write the measurements to this file")
    args = ap.parse_args()
    if args.simulate:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={args.simulate}")
        i = sys.argv.index("--simulate")
        argv = sys.argv[1:i] + sys.argv[i + 2:]
        sys.exit(subprocess.call([sys.executable, __file__, *argv], env=env))
    cfg = clip_model.get_config(args.backbone)
    mesh = sharding.make_mesh()
    backbone = Backbone(clip_model.CLIP(cfg))
    params = sharding.replicate(clip_model.init_params(cfg), mesh)
    size = cfg.image_resolution

    image_fn = jax.jit(backbone.image)
    batch = sharding.shard_batch({"image": np.zeros((args.batch, size, size, 3), np.float32)}, mesh)["image"]
    jax.block_until_ready(image_fn(params, batch))
    n_batches = max(1, args.images // args.batch) * args.passes
    t0 = time.perf_counter()
    for _ in range(n_batches):
        out = image_fn(params, batch)
    jax.block_until_ready(out)
    rates = {"bare image forward": n_batches * args.batch / (time.perf_counter() - t0)}

    config = ivlp_config.get_config("")
    config.prompts.text.depth = min(config.prompts.text.depth, cfg.text_layers)      # within small towers
    config.prompts.vision.depth = min(config.prompts.vision.depth, cfg.vision_layers)
    method = build_method(config, backbone, Tokenizer.builtin_tiny())
    prompts = method.init(jax.random.key(0), params)
    per_class = -(-args.images // args.classes)
    data = build_dataset("synthetic", None, shots=0, seed=1, num_classes=min(args.classes, 48),
                         test_per_class=per_class * max(1, args.classes // 48), image_size=size)
    step = evaluate.make_eval_step(method)
    names = list(data.classnames)
    loader = lambda: eval_loader(data.test, global_batch_size=args.batch, image_size=size, mesh=mesh,
                                 num_workers=args.workers)

    def evaluate_over(batches) -> evaluate.EvalResult:
        return evaluate.evaluate_batches(method, prompts, params, names, data.template, batches, step)

    first = evaluate_over(loader())                  # compiles the step and the class text features
    t0 = time.perf_counter()
    result = evaluate_over(loader())
    rates["evaluate, host-generated input (loader, text cache, masked counts)"] = \
        result.num_examples / (time.perf_counter() - t0)
    if args.device_input:
        batches = list(loader())                     # the same sharded, padded, masked batches, built once
        jax.block_until_ready(batches)
        again = evaluate_over(batches)
        assert again.num_examples == first.num_examples and again.accuracy == first.accuracy, (again, first)
        t0 = time.perf_counter()
        for _ in range(args.passes):
            result = evaluate_over(batches)          # fetches its counts, so each pass has finished
        rates["evaluate, device-resident input (text cache, masked counts)"] = \
            args.passes * result.num_examples / (time.perf_counter() - t0)
        t0 = time.perf_counter()                     # what evaluate_batches spends on the classes, once per call
        side = jax.block_until_ready(evaluate.class_side(method, prompts, params, names, data.template))
        side_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(args.passes):
            counts = [step(prompts, params, side, b) for b in batches]
        jax.block_until_ready(counts)
        rates["eval step alone, device-resident input (text features precomputed)"] = \
            args.passes * result.num_examples / (time.perf_counter() - t0)

    bare = rates["bare image forward"]
    print(f"{args.backbone}, batch {args.batch}, {first.num_examples} images x {len(names)} classes, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s), {args.workers} input workers\n")
    print("| path | images/s | of the bare forward |\n|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {100 * rate / bare:.0f}% |")
    key = "device-resident" if args.device_input else "host-generated"
    final = next(rate for name, rate in rates.items() if key in name)
    if args.device_input:
        print(f"\nclass text side (class_side, once per evaluate call): {side_seconds:.3f} s")
    print(f"\nevaluation ({key} input) at {100 * final / bare:.0f}% of the bare forward "
          f"({final:.1f} / {bare:.1f} images/s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backbone": args.backbone, "batch": args.batch, "num_examples": first.num_examples,
                       "num_classes": len(names), "devices": jax.device_count(),
                       "platform": jax.devices()[0].platform, "images_per_s": rates,
                       "class_side_seconds": side_seconds if args.device_input else None,
                       "ratio": {name: rate / bare for name, rate in rates.items()}}, f, indent=2)


if __name__ == "__main__":
    main()
