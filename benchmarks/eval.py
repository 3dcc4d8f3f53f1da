"""Evaluation throughput against the bare image forward, on ViT-B/16 shapes with random weights.

    python benchmarks/eval.py                    # all local devices
    python benchmarks/eval.py --simulate 8       # 8 simulated CPU devices (re-runs itself with XLA_FLAGS)

`evaluate` is the whole path (grain loader decoding and transforming synthetic images, sharded batches, cached class
text features, masked counts); `bare forward` is the jitted image tower alone on device-resident batches.
"""
from __future__ import annotations

import argparse
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
    n_batches = args.images // args.batch
    t0 = time.perf_counter()
    for _ in range(n_batches):
        out = image_fn(params, batch)
    jax.block_until_ready(out)
    bare = n_batches * args.batch / (time.perf_counter() - t0)

    config_arg = "demo" if args.backbone == "tiny" else ""    # prompt depths within the tiny towers
    method = build_method(ivlp_config.get_config(config_arg), backbone, Tokenizer.builtin_tiny())
    prompts = method.init(jax.random.key(0), params)
    per_class = -(-args.images // args.classes)
    data = build_dataset("synthetic", None, shots=0, seed=1, num_classes=min(args.classes, 48),
                         test_per_class=per_class * max(1, args.classes // 48), image_size=size)
    step = evaluate.make_eval_step(method)
    loader = lambda: eval_loader(data.test, global_batch_size=args.batch, image_size=size, mesh=mesh,
                                 num_workers=args.workers)
    evaluate.evaluate_batches(method, prompts, params, list(data.classnames), data.template, loader(), step)
    t0 = time.perf_counter()
    result = evaluate.evaluate_batches(method, prompts, params, list(data.classnames), data.template, loader(), step)
    full = result.num_examples / (time.perf_counter() - t0)
    print(f"{args.backbone}, batch {args.batch}, {jax.device_count()} {jax.devices()[0].platform} device(s), "
          f"{args.workers} input workers\n")
    print("| path | images/s |\n|---|---|")
    print(f"| bare image forward | {bare:.1f} |\n| evaluate (input, text cache, masked counts) | {full:.1f} |")
    print(f"\nevaluation at {100 * full / bare:.0f}% of the bare forward")


if __name__ == "__main__":
    main()
