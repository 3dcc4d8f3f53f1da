"""2SFS: stage 1 tunes the block LayerNorms of both towers, stage 2 a linear head initialised from the adapted
class text features; base classes are scored by the head, new classes by the adapted text tower.

Source recipe: FarinaMatteo/rethinking_fewshot_vlms `main.py` defaults (mode twostage, peft ln, ln_modality both,
ln_{vision,text}_start 0, lr 2e-4, wd 1e-2, batch 32, n_iters 300 per shot, n_iters_frac 0.6) and `fs/twostage.py`
(AdamW, betas (0.9, 0.999), a CosineAnnealingLR per stage down to 1e-6, no warm-up; the dataset's template; the
same hyper-parameters for every dataset); `datasets/__init__.py` (RandomResizedCrop scale (0.08, 1) + flip).
Run: python launch.py --config configs/twostage.py:dataset=OxfordPets,seed=1,weights=/path/ViT-B-16 --workdir DIR
"""
from configs import common
from configs.clip_lora import adamw_recipe


def get_config(arg=None):
    c = common.base_config("twostage")
    c.twostage = dict(iterations_per_shot=300, stage1_fraction=0.6)
    return adamw_recipe(c, arg, "twostage")
