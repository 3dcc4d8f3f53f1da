"""IVLP: independent deep vision and language prompts, CE only.

Source recipe: PromptSRC repo `configs/trainers/IVLP/vit_b16_c2_ep20_batch4_4+4ctx.yaml` (4+4 tokens, depth 9+9,
"a photo of a", SGD lr 0.0025, 20 epochs, batch 4), the base of APLe and PromptSRC.
Run: python launch.py --config configs/ivlp.py:dataset=OxfordPets,seed=1,weights=/path/ViT-B-16 --workdir DIR
"""
from configs import common


def get_config(arg=None):
    c = common.base_config("ivlp")
    return common.apply_args(c, arg)
