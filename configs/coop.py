"""CoOp: a generic context of 4 tokens from "a photo of a", class token at the end, CE.

Source recipe: the CoOp row of CoCoOp's base-to-novel table (CoOp repo `configs/trainers/CoOp/vit_b16_ctxv1.yaml`:
batch 32, SGD lr 0.002, 200 epochs; ImageNet 50 epochs). `:ijcv` gives the IJCV setting (16 random tokens).
Run: python launch.py --config configs/coop.py:dataset=OxfordPets,seed=1,weights=/path/ViT-B-16 --workdir DIR
"""
from configs import common


def coop_base(method: str = "coop"):
    c = common.base_config(method)
    c.prompts.text.update(n_ctx=4, depth=1, init="a photo of a")
    c.prompts.vision.depth = 0
    c.optim.update(lr=0.002, epochs=200)
    c.batch_size = 32
    return c


def get_config(arg=None):
    c = coop_base()
    a = common.parse_arg(arg, **common.COMMON_ARGS, ijcv=False)
    if a.ijcv:
        c.prompts.text.update(n_ctx=16, init="random")
    c = common.apply_args(c, arg, ijcv=False)
    if c.dataset.name == "ImageNet":
        c.optim.epochs = 50
    return c
