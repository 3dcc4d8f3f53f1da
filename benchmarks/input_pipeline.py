"""Input-pipeline throughput: decoded and augmented images/s at 224 px from generated ~500x375 JPEGs.

    python benchmarks/input_pipeline.py [--workers 0 1 2 4] [--batch-size 32] [--steps 12] [--root DIR|gs://...]

`--root` is where the JPEGs are written and read from: a local folder or a bucket prefix (default: a temporary
local folder); from a bucket the loader keeps 32 reads in flight per process (aple_jax/data/pipeline.py).

Prints a Markdown table (workers = grain worker processes; 0 = decoding threads in the main process).
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aple_jax import paths
from aple_jax.data import build_dataset
from aple_jax.data.pipeline import train_loader
from aple_jax.sharding import make_mesh


def photo_like_jpeg(seed: int, height: int = 375, width: int = 500) -> bytes:
    """A JPEG with smooth structure plus texture, so its size and decode cost resemble a photo's."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(xx * rng.uniform(2, 12) + rng.uniform(0, 6)) * np.cos(yy * rng.uniform(2, 12))
                     for _ in range(3)], -1)
    pixels = 127 + 90 * base + rng.normal(0, 12, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_images(root: str, num_images: int, num_classes: int = 8) -> int:
    """A custom dataset (class folders) of generated JPEGs; returns the mean file size in bytes."""
    sizes = []
    for i in range(num_images):
        data = photo_like_jpeg(i)
        sizes.append(len(data))
        paths.write_bytes_atomic(paths.join(root, f"class_{i % num_classes}", f"{i:05d}.jpg"), data)
    return int(np.mean(sizes))


def images_per_second(source, workers: int, batch_size: int, steps: int, warmup: int) -> float:
    """Steady-state rate of the training loader (batches delivered as sharded device arrays)."""
    loader = train_loader(source, global_batch_size=batch_size, image_size=224, seed=0, mesh=make_mesh(),
                          num_workers=workers)
    try:
        for _ in range(warmup):
            next(loader)["image"].block_until_ready()
        start = time.perf_counter()
        for _ in range(steps):
            next(loader)["image"].block_until_ready()
        return steps * batch_size / (time.perf_counter() - start)
    finally:
        loader.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument("--root", help="where the JPEGs go: a local folder or gs://bucket/prefix (default: a "
                                       "temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.root or scratch
        mean_size = write_images(root, args.num_images)
        train = build_dataset("custom", root, shots=0, seed=0).train
        rows = [(w, images_per_second(train, w, args.batch_size, args.steps, args.warmup)) for w in args.workers]
    print(f"\nInput pipeline from {args.root or 'local disk'}, {len(train)} generated 500x375 JPEGs "
          f"(mean {mean_size // 1024} KiB), "
          f"RandomResizedCrop 224 + flip + normalise, batch {args.batch_size}, {os.cpu_count()} CPU cores\n")
    print("| workers | images/s | ms/image |")
    print("|---|---|---|")
    for workers, rate in rows:
        print(f"| {workers if workers else '0 (threads)'} | {rate:.1f} | {1000 / rate:.1f} |")


if __name__ == "__main__":
    main()
