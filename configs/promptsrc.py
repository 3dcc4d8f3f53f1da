"""PromptSRC: IVLP 4+4 at depth 9 + self-regularization (L1 to frozen text features x25, L1 to frozen image
features x10, KL to zero-shot logits) + Gaussian prompt aggregation over epochs.

Source recipe: PromptSRC repo `configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml` (SGD lr 0.0025,
20 epochs, batch 4, GPA mean 15 std 1; text teacher = the 60 ImageNet templates, raw features averaged).
`:xd` / `:dg`: `..._4+4ctx_cross_datasets.yaml` (depth 3, GPA mean 6 std 10).
Run: python launch.py --config configs/promptsrc.py:dataset=OxfordPets,seed=1,weights=/path/ViT-B-16 --workdir DIR
"""
from configs import common


def get_config(arg=None):
    c = common.base_config("promptsrc")
    c.loss_weights.update(kl=1.0, l1_text=25.0, l1_image=10.0)
    c.teacher.update(templates="ensemble", ensemble="raw_mean")
    c.gpa.update(enabled=True, mean=15.0, std=1.0)
    c = common.apply_args(c, arg)
    if c.setting == "transfer":
        c.prompts.text.depth = c.prompts.vision.depth = 3
        c.gpa.update(mean=6.0, std=10.0)
    if c.backbone.name == "tiny":   # the test preset's 4 epochs
        c.gpa.update(mean=float(c.optim.epochs) - 1, std=1.0)
    return c
