"""Contrastive pretraining of the world's tiny CLIP on an endless stream of rendered images and their captions.

    python -m aple_jax.world.pretrain --out aple_jax/assets/world_clip --seed 0

writes the BPE vocabulary (vocab.json + merges.txt), the weights in Hugging Face layout (config.json +
model.safetensors, loaded by `aple_jax.clip.weights.load_clip`) and training.json (command, seed, steps, time,
losses, zero-shot accuracies). Batch `step` is a pure function of (seed, step), so a run resumed from its orbax
checkpoints (in --workdir) sees the same data as an uninterrupted one.

    python -m aple_jax.world.pretrain --out aple_jax/assets/world_clip --init-from aple_jax/assets/world_clip \
        --steps 600 --lr 0.0005 --warmup 50 --prompt-tokens 4

continues training a shipped model (its vocabulary kept) with `--prompt-tokens` random vision prompt tokens in half
of every batch (shallow and deep, as IVLP inserts them): a ViT with 16 patch tokens is otherwise thrown off by four
extra tokens it never saw, which a 197-token ViT-B/16 hardly notices.

    python -m aple_jax.world.pretrain --out aple_jax/assets/world_clip_large --init-from aple_jax/assets/world_clip \
        --vision-layers 8 --steps 150 --lr 0.0005 --warmup 15 --prompt-tokens 4 --ckpt-every 25
    python -m aple_jax.world.pretrain --out aple_jax/assets/world_clip_xl --init-from aple_jax/assets/world_clip_large \
        --widen-vision --steps 1200 --lr 0.00025 --warmup 50 --prompt-tokens 4 --ckpt-every 100 --save-dtype float16

grow the model before it continues (`aple_jax.world.grow`: `deepen` adds blocks whose residual branches start at
zero, `widen` doubles the vision width with copied channels; training starts from the old model's function) into
the larger world CLIPs that teach PromptKD (`world-large`; `world-xl`, 4.6 times the shipped model's FLOPs).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import random
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from aple_jax import paths
from aple_jax.checkpoint import RunCheckpoints
from aple_jax.clip import model as clip_model
from aple_jax.clip.model import CLIP, CLIPConfig, init_params
from aple_jax.clip.tokenizer import Tokenizer
from aple_jax.clip.weights import load_clip, save_hf
from aple_jax.data.transforms import normalize
from aple_jax.errors import error_boundary, exit_at_once_after_storage_faults
from aple_jax.sharding import local_batch_size, make_mesh, replicate, shard_batch
from aple_jax.world.attributes import sample_groups
from aple_jax.world.bpe import train_world_bpe
from aple_jax.world.captions import captions
from aple_jax.world.datasets import PRETRAIN_STREAM, WORLD_DATASETS
from aple_jax.world.grow import deepen, widen
from aple_jax.world.render import render
from aple_jax.world.zeroshot import zero_shot_accuracy

MAX_LOGIT_SCALE = float(np.log(100.0))


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Optimisation settings of one pretraining run."""
    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 200
    weight_decay: float = 0.1
    seed: int = 0
    ckpt_every: int = 250
    group: int = 4
    prompt_tokens: int = 0     # random vision prompt tokens (shallow + every deep layer) in half of each batch


def world_clip_config(vocab_size: int, **overrides: Any) -> CLIPConfig:
    """The shipped tiny CLIP: 4-layer ViT (64 px, 16 px patches, width 128), 4-layer text transformer (width 96)."""
    base = dict(embed_dim=128, image_resolution=64, vision_layers=4, vision_width=128, vision_patch_size=16,
                vision_heads=2, context_length=24, vocab_size=vocab_size, text_width=96, text_heads=2,
                text_layers=4)
    return CLIPConfig(**{**base, **overrides})


def make_batch(step: int, seed: int, batch_size: int, group: int, tokenizer: Tokenizer, cfg: CLIPConfig,
               process: int = 0, prompt_tokens: int = 0) -> dict[str, np.ndarray]:
    """Batch `step` of a process's stream: CLIP-normalised images (B, S, S, 3), caption tokens (B, context_length).

    Images come in groups of `group` that differ in one attribute, which their captions name (`sample_groups`).
    With `prompt_tokens` = n, "prompts" (B/2, L, n, width) holds random vision prompts for the second half of the
    batch: row l is the shallow prompt (l = 0) or the deep prompt of layer l, each row with its own scale.
    """
    rng = np.random.default_rng([seed, PRETRAIN_STREAM, process, step])
    attrs, varying = sample_groups(rng, batch_size, group)
    images = render(attrs, rng, cfg.image_resolution)
    texts = captions(attrs, random.Random(int(rng.integers(2 ** 62))), varying)
    tokens, _ = tokenizer.tokenize(texts, cfg.context_length)
    batch = {"image": normalize(images), "tokens": tokens}
    if prompt_tokens:
        shape = (batch_size // 2, cfg.vision_layers, prompt_tokens, cfg.vision_width)
        scale = np.exp(rng.uniform(np.log(0.02), np.log(1.0), size=shape[:2] + (1, 1)))
        batch["prompts"] = (rng.standard_normal(shape) * scale).astype(np.float32)
    return batch


def prefetch(make: Callable[[int], dict[str, np.ndarray]], start: int, stop: int, depth: int = 3
             ) -> Iterator[dict[str, np.ndarray]]:
    """`make(step)` for steps start..stop-1, computed `depth` batches ahead in a background thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)

    def worker() -> None:
        try:
            for step in range(start, stop):
                q.put(make(step))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            q.put(e)

    threading.Thread(target=worker, daemon=True).start()
    for _ in range(start, stop):
        item = q.get()
        if isinstance(item, BaseException):
            raise item
        yield item


def prompted_logits(model: CLIP, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    """Image x caption logits where the second half of the images carries batch["prompts"]."""
    images, tokens, prompts = batch["image"], batch["tokens"], batch["prompts"]
    half = images.shape[0] - prompts.shape[0]
    deep = [prompts[:, layer] for layer in range(1, prompts.shape[1])]
    plain = model.apply({"params": params}, images[:half], method=CLIP.encode_image)
    prompted = model.apply({"params": params}, images[half:], prompts[:, 0], deep, method=CLIP.encode_image)
    embeds = model.apply({"params": params}, tokens, method=CLIP.embed_tokens)
    txt = model.apply({"params": params}, embeds, jnp.argmax(tokens, axis=-1), method=CLIP.encode_text)
    img = clip_model.normalize(jnp.concatenate([plain, prompted]))
    return jnp.exp(params["logit_scale"]) * img @ clip_model.normalize(txt).T


def contrastive_loss(model: CLIP, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    """CLIP's symmetric InfoNCE over the batch (image i matches caption i)."""
    if "prompts" in batch:
        logits = prompted_logits(model, params, batch)
        logits_t = logits.T
    else:
        logits, logits_t = model.apply({"params": params}, batch["image"], batch["tokens"])
    labels = jnp.arange(logits.shape[0])
    ce = optax.softmax_cross_entropy_with_integer_labels
    return (ce(logits, labels).mean() + ce(logits_t, labels).mean()) / 2


def make_optimizer(pc: PretrainConfig) -> optax.GradientTransformation:
    """AdamW with linear warmup and cosine decay; no weight decay on biases, norms and logit_scale."""
    if not 0 <= pc.warmup < pc.steps:
        raise ValueError(f"warmup must be in 0..steps-1, got warmup={pc.warmup} with steps={pc.steps}")
    schedule = optax.warmup_cosine_decay_schedule(0.0, pc.lr, pc.warmup, pc.steps)
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(schedule, b2=0.98, weight_decay=pc.weight_decay, mask=decay_mask))


def make_train_step(model: CLIP, tx: optax.GradientTransformation) -> Callable:
    """jit(state, batch) -> (state, loss) with the state donated; logit_scale kept at most log(100)."""
    def step(state: dict[str, Any], batch: dict[str, jax.Array]) -> tuple[dict[str, Any], jax.Array]:
        loss, grads = jax.value_and_grad(lambda p: contrastive_loss(model, p, batch))(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        params = {**params, "logit_scale": jnp.minimum(params["logit_scale"], MAX_LOGIT_SCALE)}
        return {"params": params, "opt_state": opt_state}, loss

    return jax.jit(step, donate_argnums=(0,))


def pretrain(cfg: CLIPConfig, tokenizer: Tokenizer, pc: PretrainConfig, workdir: str | None = None,
             progress: bool = True, init: Any = None) -> tuple[Any, list[float]]:
    """(fp32 params as numpy, per-step losses) after `pc.steps` steps from `init` (default: random); resumes from
    checkpoints in `workdir`."""
    if tokenizer.vocab_size != cfg.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model vocab_size is {cfg.vocab_size}")
    mesh = make_mesh()
    local = local_batch_size(pc.batch_size, mesh)
    model, tx = CLIP(cfg), make_optimizer(pc)
    params = init_params(cfg, pc.seed) if init is None else jax.tree.map(jnp.asarray, init)
    state = replicate({"params": params, "opt_state": tx.init(params)}, mesh)
    losses: list[float] = []
    ckpt = RunCheckpoints(workdir) if workdir else None
    start = 0
    if ckpt and ckpt.latest_step() is not None:
        start = ckpt.latest_step()
        state = ckpt.restore_state(start, state)
        losses = ckpt.restore_meta(start)["losses"]
    train_step = make_train_step(model, tx)
    batches = prefetch(lambda s: make_batch(s, pc.seed, local, pc.group, tokenizer, cfg, jax.process_index(),
                                                  pc.prompt_tokens),
                       start, pc.steps)
    bar = tqdm(range(start, pc.steps), initial=start, total=pc.steps, disable=not progress, desc="pretrain",
               mininterval=5)
    with jax.set_mesh(mesh):
        for step in bar:
            state, loss = train_step(state, shard_batch(next(batches), mesh))
            losses.append(float(loss))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", refresh=False)
            if ckpt and ((step + 1) % pc.ckpt_every == 0 or step + 1 == pc.steps):
                ckpt.save(step + 1, state, {"losses": losses})
    if ckpt:
        ckpt.close()
    return jax.tree.map(np.asarray, state["params"]), losses


def run(out: str, pc: PretrainConfig, workdir: str, eval_per_class: int, progress: bool = True,
        init_from: str = "", vision_layers: int = 0, text_layers: int = 0, widen_vision: bool = False,
        save_dtype: str = "float32") -> dict[str, Any]:
    """Vocabulary, pretraining, HF export and zero-shot evaluation into `out`; returns the training record.

    With `init_from` (a model this command wrote) training continues from its weights and vocabulary, and the
    record keeps that model's record under "continued_from"; `vision_layers` / `text_layers` (with `init_from`)
    first grow its towers to that depth and `widen_vision` doubles the vision tower's width, function-preservingly.
    The weights are written in `save_dtype` (float16 halves the file; zero-shot is measured on the written file).
    """
    t0 = time.time()
    previous, init = None, None
    if init_from:
        with open(os.path.join(init_from, "training.json")) as f:
            previous = json.load(f)
        cfg, init = deepen(*load_clip(init_from), vision_layers=vision_layers, text_layers=text_layers)
        if widen_vision:
            cfg, init = widen(cfg, init, seed=pc.seed)
        os.makedirs(out, exist_ok=True)
        for name in ("vocab.json", "merges.txt"):
            if os.path.abspath(init_from) != os.path.abspath(out):
                shutil.copy(os.path.join(init_from, name), os.path.join(out, name))
    else:
        cfg = world_clip_config(train_world_bpe(out, pc.seed))
    params, losses = pretrain(cfg, Tokenizer.from_path(out), pc, workdir, progress, init)
    save_hf(out, cfg, params, dtype=save_dtype)
    train_s = time.time() - t0
    accuracies = {name: zero_shot_accuracy(name, eval_per_class, seed=0, weights=out) for name in WORLD_DATASETS}
    record = {
        "command": "python -m aple_jax.world.pretrain " + " ".join(sys.argv[1:]),
        "seed": pc.seed, "pretrain": dataclasses.asdict(pc), "model": dataclasses.asdict(cfg),
        "devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
        "train_seconds": round(train_s, 1), "first_loss": round(float(np.mean(losses[:20])), 4),
        "final_loss": round(float(np.mean(losses[-50:])), 4),
        "loss_every_100": [round(float(np.mean(losses[i:i + 100])), 4) for i in range(0, len(losses), 100)],
        "zero_shot": {"function": "aple_jax.world.zero_shot_accuracy(name, n_per_class, seed=0)",
                      "n_per_class": eval_per_class, "top1": accuracies},
    }
    if previous is not None:
        record["continued_from"] = previous
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(record, f, indent=2)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=paths.user_path, help="output directory (HF CLIP layout + tokenizer)")
    parser.add_argument("--workdir", default="/tmp/world_clip_run", type=paths.user_path, help="orbax checkpoints (resumed if present)")
    parser.add_argument("--eval-per-class", type=int, default=20, help="held-out test images per class")
    parser.add_argument("--init-from", default="", type=paths.user_path, help="continue from this model (weights and vocabulary)")
    parser.add_argument("--vision-layers", type=int, default=0, help="with --init-from: grow the vision tower to this depth")
    parser.add_argument("--text-layers", type=int, default=0, help="with --init-from: grow the text tower to this depth")
    parser.add_argument("--widen-vision", action="store_true",
                        help="with --init-from: double the vision tower's width and heads (after any deepening)")
    parser.add_argument("--save-dtype", default="float32", choices=("float32", "float16"),
                        help="dtype of the written model.safetensors (float16: half the size)")
    defaults = PretrainConfig()
    for field in dataclasses.fields(PretrainConfig):
        value = getattr(defaults, field.name)
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args()
    pc = PretrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)})
    if (args.vision_layers or args.text_layers or args.widen_vision) and not args.init_from:
        parser.error("--vision-layers / --text-layers / --widen-vision grow a trained model: give --init-from")
    record = run(args.out, pc, args.workdir, args.eval_per_class, init_from=args.init_from,
                 vision_layers=args.vision_layers, text_layers=args.text_layers, widen_vision=args.widen_vision,
                 save_dtype=args.save_dtype)
    print(json.dumps({k: record[k] for k in ("train_seconds", "final_loss", "zero_shot")}, indent=2))


if __name__ == "__main__":
    with exit_at_once_after_storage_faults(), error_boundary():
        main()
