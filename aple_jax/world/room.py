"""Room to learn: how far a linear probe on frozen image features gets above zero-shot, per world dataset.

    python -m aple_jax.world.room [--datasets all] [--shots 16] [--pool 96] [--seeds 1,2,3] [--out DIR]

For each dataset: zero-shot top-1 (the dataset's template, as `zero_shot_accuracy`), a k-shot linear probe (CoOp's
k-shot sampling from a pool of `pool` training images per class, mean over seeds) and the full-pool probe as a
ceiling; room = k-shot probe - zero-shot, in points. The probe is multinomial logistic regression on the
normalised image features (L-BFGS), its L2 weight picked on the validation split, as CLIP's linear probes are.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from aple_jax import paths
from aple_jax.errors import ConfigError, error_boundary
from aple_jax.world.datasets import WORLD_DATASETS, build_world_dataset, parse_name
from aple_jax.world.zeroshot import WORLD_CLIP_DIR, class_text_features, image_features, load_world_clip

L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3)
PROBE_STEPS = 200
TEST_PER_CLASS = 20          # as zero_shot_accuracy and the runs' test split


@dataclasses.dataclass(frozen=True)
class Room:
    dataset: str
    classes: int
    zero_shot: float         # top-1 in [0, 1]
    probe_fewshot: float     # mean over seeds
    probe_fewshot_std: float
    probe_full: float

    @property
    def room(self) -> float:
        """k-shot probe minus zero-shot, in points."""
        return 100 * (self.probe_fewshot - self.zero_shot)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def fit_probe(x: jax.Array, y: jax.Array, num_classes: int, l2: float) -> jax.Array:
    """(D + 1, C) weights and bias of a softmax regression of labels `y` on features `x`, by L-BFGS."""
    def loss(w):
        logits = x @ w[:-1] + w[-1]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce + l2 * jnp.sum(w[:-1] ** 2)

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry, _):
        w, state = carry
        value, grad = value_and_grad(w, state=state)
        updates, state = opt.update(grad, state, w, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(w, updates), state), None

    w0 = jnp.zeros((x.shape[1] + 1, num_classes), x.dtype)
    (w, _), _ = jax.lax.scan(step, (w0, opt.init(w0)), None, length=PROBE_STEPS)
    return w


def probe_accuracy(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                   test: tuple[np.ndarray, np.ndarray], num_classes: int) -> float:
    """Test top-1 of the probe whose L2 weight (from L2_GRID) scores best on `val`."""
    def accuracy(w, split):
        return float(((split[0] @ w[:-1] + w[-1]).argmax(-1) == split[1]).mean())

    fits = [fit_probe(jnp.asarray(train[0]), jnp.asarray(train[1]), num_classes, l2) for l2 in L2_GRID]
    best = max(range(len(fits)), key=lambda i: (accuracy(fits[i], val), -i))
    return accuracy(fits[best], test)


def measure(dataset: str, shots: int, pool: int, seeds: Sequence[int], weights: str = WORLD_CLIP_DIR) -> Room:
    """The room of one world dataset (images rendered with world seed 0, as every run's)."""
    size = load_world_clip(weights)[0].image_resolution
    full = build_world_dataset(dataset, shots=0, seed=0, image_size=size, train_per_class=pool,
                               val_per_class=4, test_per_class=TEST_PER_CLASS)
    pool_x = image_features(dataset, full.train, weights)
    val = (image_features(dataset, full.val, weights), full.val.labels)
    test = (image_features(dataset, full.test, weights), full.test.labels)
    text = class_text_features(full.classnames, full.template, weights)
    zero_shot = float(((test[0] @ text.T).argmax(-1) == test[1]).mean())
    fewshot = []
    for seed in seeds:
        picked = build_world_dataset(dataset, shots=shots, seed=seed, image_size=size, train_per_class=pool,
                                     val_per_class=4, test_per_class=1)
        rows = np.asarray([r.key for r in picked.train.records])       # keys index the pool in order
        fewshot.append(probe_accuracy((pool_x[rows], picked.train.labels), val, test, full.num_classes))
    probe_full = probe_accuracy((pool_x, full.train.labels), val, test, full.num_classes)
    return Room(dataset, full.num_classes, zero_shot, float(np.mean(fewshot)), float(np.std(fewshot)), probe_full)


def markdown(rooms: Sequence[Room], shots: int) -> str:
    """The room table, datasets sorted by room."""
    lines = [f"| dataset | classes | zero-shot | {shots}-shot probe | full probe | room |", "|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rooms, key=lambda r: -r.room):
        lines.append(f"| {r.dataset} | {r.classes} | {100 * r.zero_shot:.1f} | {100 * r.probe_fewshot:.1f} "
                     f"± {100 * r.probe_fewshot_std:.1f} | {100 * r.probe_full:.1f} | {r.room:+.1f} |")
    return "\n".join(lines)


def parse_datasets(text: str) -> list[str]:
    if text == "all":
        return list(WORLD_DATASETS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    for name in names:
        try:
            parse_name(name)
        except ValueError as e:
            raise ConfigError(f"--datasets: {e}") from None
    return names


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers >= 0 like 1,2,3")
    return seeds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aple_jax.world.room", description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="all", help="comma-separated world datasets, or `all` (default)")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--pool", type=int, default=96, help="training images per class to sample shots from")
    parser.add_argument("--seeds", default="1,2,3", help="few-shot sampling seeds")
    parser.add_argument("--weights", default=WORLD_CLIP_DIR, type=paths.user_path, help="a world CLIP directory (default: the shipped one)")
    parser.add_argument("--out", default="", type=paths.user_path, help="a folder for room.json and room.md")
    with error_boundary():
        a = parser.parse_args(argv)
        if not 1 <= a.shots <= a.pool:
            raise ConfigError(f"--shots {a.shots}: expected 1 <= shots <= --pool ({a.pool})")
        seeds = parse_seeds(a.seeds)
        rooms = []
        for name in parse_datasets(a.datasets):
            rooms.append(measure(name, a.shots, a.pool, seeds, a.weights))
            print(f"{name}: zero-shot {100 * rooms[-1].zero_shot:.1f}, probe {100 * rooms[-1].probe_fewshot:.1f}, "
                  f"room {rooms[-1].room:+.1f}", file=sys.stderr, flush=True)
        table = markdown(rooms, a.shots)
        print(table)
        if a.out:
            rows = [dict(dataclasses.asdict(r), room=r.room) for r in rooms]
            paths.write_json_atomic(paths.join(a.out, "room.json"), {"shots": a.shots, "pool": a.pool,
                                                                     "seeds": seeds, "rows": rows})
            paths.write_text_atomic(paths.join(a.out, "room.md"), table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
