"""Zero-shot CLIP with the dataset's hand-crafted template (CoOp's CUSTOM_TEMPLATES), or `:ensemble` for CLIP's
ImageNet template ensemble. Nothing trains; the run evaluates and writes results.json.
Run: python launch.py --config configs/zeroshot.py:dataset=OxfordPets,weights=/path/ViT-B-16 --workdir DIR
"""
from configs import common


def get_config(arg=None):
    c = common.base_config("zeroshot")
    c = common.apply_args(c, arg, ensemble=False)
    if common.parse_arg(arg, **common.COMMON_ARGS, ensemble=False).ensemble:
        c.zeroshot.templates = "ensemble"
    return c
