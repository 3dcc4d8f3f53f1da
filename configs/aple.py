"""APLe: independent deep V-L prompts + Gaussian-filter image adapter; Stage I trains language then vision tokens
with CE + KL to zero-shot CLIP, Stage II adapts both with CE.

Only sigma = 0.05 and alpha = 0.9 come from a (secondary) summary of the paper; every other value is our
reconstruction, documented in docs/aple.md: prompts 4+4 at depth 9 and SGD lr 0.0025 / batch 4 as PromptSRC's IVLP,
5 + 5 + 5 epochs as a placeholder to sweep.
Run: python launch.py --config configs/aple.py:dataset=OxfordPets,seed=1,weights=/path/ViT-B-16 --workdir DIR
Demo (no files needed): python launch.py --config configs/aple.py:demo --workdir /tmp/aple_demo  (the world preset,
seeds 1, 2 and 3 in one program)
"""
import ml_collections

from configs import common


def get_config(arg=None):
    c = common.base_config("aple")
    c.adapter.enabled = True
    c.stage1 = ml_collections.ConfigDict(dict(
        order="LV", granularity="modality", untrained_modality="absent", trained_modality="frozen",
        epochs=5, kl_weight=1.0, feature_l1=(0.0, 0.0)))
    c.stage2 = ml_collections.ConfigDict(dict(enabled=True, loss="ce", epochs=5))
    c.teacher.templates = "dataset"
    c = common.apply_args(c, arg)
    if c.backbone.name == "tiny":   # the test preset: short phases
        c.stage1.epochs, c.stage2.epochs = 3, 3
    return c
