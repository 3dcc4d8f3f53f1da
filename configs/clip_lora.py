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
    `iterations_per_shot`) gives way to the preset's epochs, and the rate to one that moves a tiny CLIP."""
    c.optim.update(name="adamw", lr=2e-4, weight_decay=1e-2, betas=(0.9, 0.999), schedule="cosine_step",
                   min_lr=1e-6, warmup_epochs=0)
    c.batch_size = 32
    c.dataset.crop_scale = (0.08, 1.0)
    c = common.apply_args(c, arg)
    if common.parse_arg(arg, **common.COMMON_ARGS).tiny:
        c[budget].iterations_per_shot = 0
        c.optim.lr = 5e-3
    return c


def get_config(arg=None):
    c = common.base_config("clip_lora")
    c.lora = dict(rank=2, alpha=1.0, dropout=0.25, towers=("text", "vision"), matrices=("query", "key", "value"),
                  layers="all", iterations_per_shot=500)
    return adamw_recipe(c, arg, "lora")
