"""CLIP-LoRA: rank-2 LoRA (alpha 1, input dropout 0.25) on q, k, v of every block of both towers, CE on the
dataset's hand-crafted template; no prompt tokens.

Source recipe: MaxZanella/CLIP-LoRA `run_utils.py` defaults (r 2, alpha 1, dropout_rate 0.25, params q k v,
position all, encoder both, lr 2e-4, batch 32, n_iters 500 per shot) and `lora.py` (AdamW, weight decay 1e-2, betas
(0.9, 0.999), CosineAnnealingLR over the 500 x shots iterations down to 1e-6, no warm-up; the same for every
dataset and shot count); `main.py` (RandomResizedCrop scale (0.08, 1) + flip). Its own protocol is few-shot on all
classes (`:fewshot`); base-to-novel, our default, was never run by its authors.
Run: python launch.py --config configs/clip_lora.py:dataset=DescribableTextures,shots=16,fewshot,seed=1,weights=/path/ViT-B-16 --workdir DIR
"""
from configs import common


def adamw_recipe(c, arg, budget):
    """CLIP-LoRA's training recipe, which 2SFS's code base keeps (AdamW, per-step cosine, batch 32, crop (0.08, 1)),
    with the common arguments applied; under `:tiny` the step budget `budget` (a ConfigDict with
    `iterations_per_shot`) gives way to the preset's epochs, and the rate to one that moves a tiny CLIP; under the
    world preset it is scaled by WORLD_ITERATION_SCALE and the rate raised to 1e-3."""
    c.optim.update(name="adamw", lr=2e-4, weight_decay=1e-2, betas=(0.9, 0.999), schedule="cosine_step",
                   min_lr=1e-6, warmup_epochs=0)
    c.batch_size = 32
    c.dataset.crop_scale = (0.08, 1.0)
    c.checkpoint_min_steps = common.CHECKPOINT_MIN_STEPS
    c = common.apply_args(c, arg)
    a = common.parse_arg(arg, **common.COMMON_ARGS)
    if a.tiny:
        c[budget].iterations_per_shot = 0
        c.optim.lr = 5e-3
    if a.world or a.demo:
        # 1/20 of the steps at 5 times the rate: at 2e-4 the world's 240 to 400 steps (of 4,800 to 8,000 on ViT-B)
        # learnt a fraction of what 1e-3 does (docs/world.md)
        c[budget].iterations_per_shot = round(c[budget].iterations_per_shot * common.WORLD_ITERATION_SCALE)
        c.optim.lr = 1e-3
    return c


def get_config(arg=None):
    c = common.base_config("clip_lora")
    c.lora = dict(rank=2, alpha=1.0, dropout=0.25, towers=("text", "vision"), matrices=("query", "key", "value"),
                  layers="all", iterations_per_shot=500)
    return adamw_recipe(c, arg, "lora")
